"""Models as ordered blocks: ResNet names, splits, custom CNNs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models import build_model, load_torchvision_backbone, split
from patrol_compress.recipe import BlocksConfig, ModelConfig
from patrol_compress.testing.tiny import randomize_bn

from .helpers import tiny_mobilenet_net


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_split_is_exact_for_every_k(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, width=0.125, stem="small"), 7).eval()
    randomize_bn(model)
    x = torch.rand(3, 3, 32, 32)
    ref = model(x)
    for k in range(1, 5):
        edge, cloud = split(model, k)
        assert torch.equal(cloud(edge(x)), ref)


def test_split_keeps_train_eval_modes() -> None:
    model = build_model(ModelConfig(width=0.125, stem="small"), 5)
    model.eval()
    model.layer2.train()  # a mixed state must survive untouched
    before = {n: m.training for n, m in model.named_modules()}
    edge, cloud = split(model, 2)
    assert not edge.training and not cloud.training
    assert {n: m.training for n, m in model.named_modules()} == before


def test_split_out_of_range_is_a_clear_error() -> None:
    model = build_model(ModelConfig(width=0.125, stem="small"), 5)
    with pytest.raises(ModelError, match="split 5 is out of range"):
        split(model, 5)


def test_resnet18_matches_torchvision_sizes_and_names() -> None:
    model = build_model(ModelConfig(), 10)
    edge2, _ = split(model, 2)
    edge4, _ = split(model, 4)
    assert sum(p.numel() for p in edge2.parameters()) == 683_072
    assert sum(p.numel() for p in edge4.parameters()) == 11_176_512
    keys = set(model.state_dict())
    for k in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer4.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
    ):
        assert k in keys


def test_torchvision_state_dict_loads() -> None:
    # A torchvision-layout state dict (same names, plus fc.*) built from a second model.
    src = build_model(ModelConfig(arch="resnet18"), 3)
    state = {k: v.clone() for k, v in src.state_dict().items() if not k.startswith("head.")}
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    for v in state.values():
        if v.is_floating_point():
            v.normal_()
    dst = build_model(ModelConfig(arch="resnet18"), 3)
    ignored = load_torchvision_backbone(dst, state)
    assert ignored == ["fc.weight", "fc.bias"]
    assert torch.equal(dst.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_torchvision_state_dict_of_wrong_arch_is_refused() -> None:
    src = build_model(ModelConfig(arch="resnet34"), 3).state_dict()
    dst = build_model(ModelConfig(arch="resnet18"), 3)
    with pytest.raises(ModelError, match="does not fit"):
        load_torchvision_backbone(dst, {k: v for k, v in src.items() if not k.startswith("head")})


def test_custom_cnn_plugs_in_through_factory() -> None:
    model = tiny_mobilenet_net()
    assert model.stage_names == ("stage1", "stage2", "stage3")
    x = torch.rand(2, 3, 32, 32)
    for k in (1, 2, 3):
        edge, cloud = split(model, k)
        assert torch.equal(cloud(edge(x)), model(x))
    assert model(x).shape == (2, 32)  # BN-neck embedding of the appended re-id head


def test_custom_blocks_naming_a_missing_child_is_refused() -> None:
    cfg = ModelConfig(
        arch="custom",
        factory="patrol_compress.testing.tiny:tiny_mobilenet",
        blocks=BlocksConfig(stem=["stem_conv"], stages=[["nope"]]),
    )
    with pytest.raises(ModelError, match="nope"):
        build_model(cfg, 6)


def test_head_outputs_by_mode() -> None:
    model = build_model(ModelConfig(width=0.125, stem="small"), 9)
    x = torch.rand(4, 3, 32, 32)
    logits, feat = model.train()(x)
    assert logits.shape == (4, 9) and feat.shape == (4, 64)
    assert model.eval()(x).shape == (4, 64)
    cls = build_model(ModelConfig(width=0.125, stem="small"), 9, task="classification").eval()
    assert cls(x).shape == (4, 9)
    assert isinstance(model.head.classifier, nn.Linear)


@pytest.mark.parametrize("task", ["reid", "classification"])
def test_used_modules_leave_out_a_classifier_only_training_uses(task: str) -> None:
    from patrol_compress.metrics.flops import count_params, used_modules
    from patrol_compress.models.head import ReidHead

    head = ReidHead(8, 5, task)  # type: ignore[arg-type]
    used = used_modules(head, (8, 2, 2))
    assert (head.classifier in used) == (task == "classification")
    neck = 2 * 8  # BatchNorm1d weight and bias
    assert count_params(head, used) == neck + (5 * 8 if task == "classification" else 0)
    assert head.training  # the eval-mode forward left the flags as they were
