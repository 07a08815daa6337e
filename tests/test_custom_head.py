"""A user's own CNN keeps its own head and its own trained weights through the recipe path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from patrol_compress import api
from patrol_compress.data import build_data
from patrol_compress.errors import ModelError
from patrol_compress.models.factory import build_model, load_own_weights
from patrol_compress.models.head import ReidHead
from patrol_compress.models.saved import load_run_model
from patrol_compress.recipe import parse_recipe

from .helpers import tiny_recipe_dict

USER_MODULE = """
from collections import OrderedDict
from torch import nn
from patrol_compress.testing.tiny import Chain, InvertedResidual


def build(num_classes, in_channels=3, width=8):
    w = width
    return Chain(OrderedDict(
        stem_conv=nn.Conv2d(in_channels, w, 3, 2, 1, bias=False),
        stem_bn=nn.BatchNorm2d(w),
        stem_act=nn.ReLU6(),
        s1=nn.Sequential(InvertedResidual(w, w, 1)),
        s2=nn.Sequential(InvertedResidual(w, 2 * w, 2)),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        fc=nn.Linear(2 * w, num_classes),
    ))
"""
HEAD = ["pool", "flat", "fc"]


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_cnn13.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_cnn13:build"


def _recipe(tmp_path: Path, factory: str, head: list[str], **model: Any) -> dict[str, Any]:
    data = tiny_recipe_dict(
        tmp_path,
        split=2,
        epochs=1,
        recovery_epochs=1,
        budget={"fit_split": 1},
        lipschitz={"alphas": [0.5, 0.1], "sigma": 0.1},
        adversarial={"enabled": True, "adversary_every": 1, "adversary_width": 16},
    )
    data["train"]["epochs"] = 1
    data["model"] = {
        "arch": "custom",
        "factory": factory,
        "blocks": {"stem": ["stem_conv", "stem_bn", "stem_act"], "stages": [["s1"], ["s2"]]},
        **model,
    }
    if head:
        data["model"]["blocks"]["head"] = head
    return data


def _own_weights(tmp_path: Path, data: dict[str, Any]) -> tuple[Path, dict[str, torch.Tensor]]:
    """The user's own 'trained' weights: its module's state dict, head included."""
    recipe = parse_recipe(data)
    classes = build_data(recipe.data).num_classes
    torch.manual_seed(123)
    net = build_model(recipe.model, classes, image_size=32)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "mine.safetensors"
    save_file(state, str(path))
    return path, state


def test_own_head_and_checkpoint_through_prune(tmp_path: Path, user_module: str) -> None:
    data = _recipe(tmp_path, user_module, HEAD)
    path, state = _own_weights(tmp_path, data)
    data["train"]["checkpoint"] = str(path)
    out = tmp_path / "run"
    metrics = api.prune(data, out=out, quiet=True)
    target, _ = load_run_model(out / "target", user_module)  # the user's own factory
    assert target.state_dict().keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(target.state_dict()[k], v), k  # started from the user's weights
    final = api.load_model(out, factory=user_module)
    assert not any(isinstance(m, ReidHead) for m in final.modules())
    assert final.fc.out_features == state["fc.weight"].shape[0]  # the user's own head
    assert metrics["edge"]["after"]["params"] <= metrics["budget"]["params"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert final(x).shape == (2, final.fc.out_features)


def test_model_pretrained_loads_the_own_head_too(tmp_path: Path, user_module: str) -> None:
    from patrol_compress.pipeline import fresh_model

    data = _recipe(tmp_path, user_module, HEAD)
    path, state = _own_weights(tmp_path, data)
    data["model"]["pretrained"] = str(path)
    recipe = parse_recipe(data)
    model = fresh_model(recipe, build_data(recipe.data))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_reid_head_appended_only_without_a_head(tmp_path: Path, user_module: str) -> None:
    # The user's head children not named in blocks: one line, not silently dropped.
    with pytest.raises(ModelError, match="leaves out the module's children"):
        build_model(parse_recipe(_recipe(tmp_path, user_module, [])).model, 5, image_size=32)
    # The user's own head must come with its weights.
    net = build_model(parse_recipe(_recipe(tmp_path, user_module, HEAD)).model, 5, image_size=32)
    state = dict(net.state_dict())
    assert load_own_weights(net, state) == []
    with pytest.raises(ModelError, match="missing keys"):
        load_own_weights(net, {k: v for k, v in state.items() if not k.startswith("fc.")})
    # A headless network gets the re-id head, which alone may start untrained.
    data = _recipe(tmp_path, "patrol_compress.testing.tiny:tiny_mobilenet", [])
    data["model"]["blocks"]["stages"] = [["s1"], ["s2"], ["s3"]]
    headless = build_model(parse_recipe(data).model, 5, image_size=32)
    assert isinstance(headless.head, ReidHead)
    body = {k: v for k, v in headless.state_dict().items() if not k.startswith("head.")}
    assert load_own_weights(headless, body) == [
        k for k in headless.state_dict() if k.startswith("head.")
    ]
