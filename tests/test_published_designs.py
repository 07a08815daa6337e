"""The CNNs users have, taken as written, through both front doors (issue 22).

Tiny MobileNetV2, VGG-11-BN, SE-ResNet and a functional CNN
(:mod:`patrol_compress.testing.cnns`: a ``features`` Sequential, functional
calls and ``torch.flatten``/``x.view`` in ``forward``), the split named by a
module path. Through the plug-in: the README's Python snippet runs as it
stands (only the model and the split are this design's), the edge ends under
half its parameters, removal is exact, the model's own forward still runs,
the ONNX export matches torch on test images, accuracy has not collapsed, and
the model trains a step afterwards. Through a recipe: ``model.factory`` with
``model.blocks`` listing the split module, the same checks on what the run
saved. What cannot be split is one line saying what to change.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress import PatrolPruner, api
from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX
from patrol_compress.errors import BudgetError, ModelError, PatrolWarning
from patrol_compress.exporters.onnx import run_onnxruntime
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.split import edge_modules
from patrol_compress.models.traced import trace_stages
from patrol_compress.pruning.masks import ChannelMask, MaskedNorm
from patrol_compress.testing.cnns import DESIGNS, functional_net, mobilenet_v2

from .helpers import shape_images, tiny_recipe_dict

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN_IMAGES, TEST_IMAGES, BATCH = 512, 256, 32
PRETRAIN_EPOCHS, PATROL_EPOCHS = 6, 3
PARITY_ATOL = 1e-4  # fp32 ONNX Runtime against torch, logits of order 10
NOT_COLLAPSED = 0.5  # accuracy after, at least this share of the accuracy before


def readme_snippet() -> str:
    """The first Python block of the README's "Python API" section, as it stands."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def run_as_module(code: str, names: dict[str, Any]) -> dict[str, Any]:
    """Import ``code`` as a module whose globals start as ``names``; fail on a PatrolWarning."""
    path = Path.cwd() / "readme_snippet.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_snippet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(names)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatrolWarning)  # a collapse or a bad schedule fails
        spec.loader.exec_module(module)
    return module.__dict__


def edge_size(factory: Callable[..., nn.Module], split: str) -> int:
    view = trace_stages(factory(num_classes=4, in_channels=3), [split], torch.zeros(1, 3, 32, 32))
    return count_params(edge_modules(view, 1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    x, y = shape_images(TRAIN_IMAGES, seed=0)
    x_test, y_test = shape_images(TEST_IMAGES, seed=1)
    loader = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, TRAIN_IMAGES, BATCH)]
    return {"x": x, "loader": loader, "x_test": x_test, "y_test": y_test}


def trained(design: str, data: dict[str, Any]) -> nn.Module:
    """The user's own training, before PATROL."""
    torch.manual_seed(0)
    model = DESIGNS[design][1](num_classes=4, in_channels=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(PRETRAIN_EPOCHS):
        model.train()
        for x, y in data["loader"]:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_readme_snippet_prunes_the_design_as_written(
    design: str, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split, factory = DESIGNS[design]
    model = trained(design, data)
    x_test, y_test = data["x_test"], data["y_test"]
    before = accuracy(model, x_test, y_test)
    edge_before = edge_size(factory, split)
    namespace = {
        "MobileNetV2": lambda num_classes: model,
        "x_train": data["x"],
        "loader": data["loader"],
        "epochs": PATROL_EPOCHS,
    }
    monkeypatch.chdir(tmp_path)  # the snippet exports to out/onnx
    namespace = run_as_module(readme_snippet().replace('"features.6"', repr(split)), namespace)
    pruner: PatrolPruner = namespace["pruner"]

    assert pruner.model is model and pruner.removal is not None
    assert pruner.edge_params() <= edge_before // 2
    assert pruner.removal.equivalence_rel_diff <= 1e-5
    assert not any(isinstance(m, (ChannelMask, MaskedNorm)) for m in model.modules())
    after = accuracy(model, x_test, y_test)
    assert after >= NOT_COLLAPSED * before, (before, after)

    edge, cloud = pruner.partitions()
    with torch.no_grad():
        sent = edge(x_test[:64])
        logits = cloud(sent)
        assert torch.equal(logits, model(x_test[:64]))  # its own forward is edge then cloud
    onnx_sent = run_onnxruntime(tmp_path / "out/onnx" / EDGE_ONNX, x_test[:64].numpy())
    onnx_logits = run_onnxruntime(tmp_path / "out/onnx" / CLOUD_ONNX, onnx_sent)
    assert float((torch.from_numpy(onnx_logits) - logits).abs().max()) <= PARITY_ATOL

    # Trained for a step afterwards, as any model: a weight moves, the loss is finite.
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first = next(p for p in model.parameters() if p.dim() == 4).detach().clone()
    loss = F.cross_entropy(model(data["x"][:BATCH]), data["loader"][0][1])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(first, next(p for p in model.parameters() if p.dim() == 4))
    print(
        f"\n{design}: plug-in, split {split}: edge {edge_before} -> {pruner.edge_params()} "
        f"params, test accuracy {before:.1%} -> {after:.1%}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_recipe_prunes_the_design_as_written(design: str, tmp_path: Path) -> None:
    split, factory = DESIGNS[design]
    edge_before = edge_size(factory, split)
    recipe = tiny_recipe_dict(
        tmp_path,
        split=1,
        epochs=1,
        budget={"params": edge_before // 2},
        lipschitz={"enabled": True, "alphas": [0.05], "sigma": 0.1},
        adversarial={"enabled": True, "adversary_every": 1, "adversary_width": 16},
    )
    recipe["model"] = {
        "arch": "custom",
        "factory": f"patrol_compress.testing.cnns:{design}",
        "blocks": [split],
    }
    recipe["train"]["epochs"] = 1
    metrics = api.prune(recipe, quiet=True)
    run = tmp_path / "run"
    assert metrics["edge"]["before"]["params"] == edge_before
    assert metrics["edge"]["after"]["params"] <= edge_before // 2
    assert metrics["removal"]["equivalence_rel_diff"] <= 1e-5

    # A run names its factory; opening it runs that code only when the user allows it.
    manifest = api.export(run, split=1, target="onnx", trust_model_code=True)  # parity-checked
    assert manifest["edge"]["params"] == metrics["edge"]["after"]["params"]
    model = api.load_model(run, factory=recipe["model"]["factory"])
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        onnx_sent = run_onnxruntime(run / "export" / "onnx-split1-fp32" / EDGE_ONNX, x.numpy())
        sent = model.run_block(split, x)
    assert float((torch.from_numpy(onnx_sent) - sent).abs().max()) <= PARITY_ATOL

    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    print(
        f"\n{design}: recipe, split {split}: edge {edge_before} -> "
        f"{metrics['edge']['after']['params']} params, {metrics['accuracy']}"
    )


def test_stage_ends_and_a_shallower_fit_split_by_path() -> None:
    """Several cut modules: one stage each; the budget may name the shallower one."""
    model = mobilenet_v2(num_classes=4)
    shallow = edge_size(mobilenet_v2, "features.3")
    pruner = PatrolPruner(
        model,
        torch.rand(2, 3, 32, 32),
        split="features.6",
        budget={"fit_split": "features.3"},
        total_steps=4,
        config={"lipschitz": {"alphas": [0.01, 0.001]}},
    )
    assert pruner.net.stage_names == ("features.3", "features.6") and pruner.split == 2
    assert pruner.budget is not None and pruner.budget.params == shallow
    _, privacy = pruner(torch.rand(4, 3, 32, 32))
    assert set(pruner.last_terms) == {"k1", "k2", "lip"} and float(privacy.detach()) > 0


class Branchy(nn.Module):
    """Python control flow on a tensor's value in the forward on the path to the split."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.mean() > 0:
            x = x * 2
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Twice(Branchy):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[2](self.features[2](self.features[1](self.features[0](x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize(
    ("make", "split", "words"),
    [
        (functional_net, "bn2", "cannot be cut there, because the forward passes 'relu'"),
        (functional_net, "bn9", "has no module 'bn9'"),
        (lambda: Branchy(), "features.1", "cannot trace the forward down to 'features.1'"),
        (lambda: Twice(), "unused", "never runs in Twice's forward"),
        (lambda: Twice(), "features.2", "runs 2 times"),
    ],
)
def test_what_cannot_be_split_is_one_line_saying_what_to_change(
    make: Callable[[], nn.Module], split: str, words: str
) -> None:
    with pytest.raises(ModelError) as info:
        PatrolPruner(make(), torch.rand(2, 3, 16, 16), split=split, total_steps=4)
    message = str(info.value)
    assert words in message and "\n" not in message
    if "cut there" in message:
        assert "'bn3'" in message  # the nearest modules that are cut points


def test_defaults_are_plain_pruning_at_the_recipes_rate() -> None:
    from patrol_compress.pruning.steering import mask_lr_for

    model = functional_net(num_classes=4)
    pruner = PatrolPruner(model, torch.rand(2, 3, 16, 16), split="bn3", budget=0.5, total_steps=50)
    assert not pruner.cfg.lipschitz.enabled and not pruner.cfg.adversarial.enabled
    assert pruner.mask_lr == pytest.approx(mask_lr_for(50, 1.0, 10.0, 1.0))
    assert pruner.mask_lr * (1.0 + 10.0) * 50 == pytest.approx(0.6)
    _, privacy = pruner(torch.rand(4, 3, 16, 16))
    assert float(privacy) == 0.0


def test_a_schedule_that_would_empty_the_blocks_is_one_warning_line() -> None:
    with pytest.warns(PatrolWarning) as caught:
        PatrolPruner(
            functional_net(num_classes=4),
            torch.rand(2, 3, 16, 16),
            split="bn3",
            budget=0.5,
            total_steps=300,
            config={"mask_lr": 0.01},
        )
    line = str(caught[0].message)
    assert line.startswith("config.mask_lr 0.01 pulls each mask down by about 33")
    assert "\n" not in line


def test_a_collapsed_model_is_one_warning_line_at_export(tmp_path: Path) -> None:
    model = functional_net(num_classes=4)
    x, _ = shape_images(64, seed=0)
    pruner = PatrolPruner(model, x[:2], split="bn3", total_steps=2)
    pruner(x)  # the first images it is given, and the unpruned model's classes on them
    pruner.prune()
    with torch.no_grad():  # a collapse: every image gets class 3
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    with pytest.warns(PatrolWarning, match=r"predicts class 3 for 100% of the first 64 images"):
        pruner.export(tmp_path / "onnx")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"budget": {"param": 5000}}, BudgetError, "budget.param: unknown key (did you mean"),
        ({"blocks": {"stem": []}}, ModelError, "blocks.stem: List should have at least 1 item"),
        ({"budget": 1.5}, BudgetError, "a share of the edge's parameters, in (0, 1)"),
        ({"config": {"epochs": 3}}, Exception, "config.epochs: a recipe's job setting"),
    ],
)
def test_papercuts_name_the_key(kwargs: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        PatrolPruner(functional_net(), torch.rand(2, 3, 16, 16), split=2, total_steps=4, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_one_pruner_per_model() -> None:
    model = functional_net()
    PatrolPruner(copy.deepcopy(model), torch.rand(2, 3, 16, 16), split="bn3", total_steps=4)
    PatrolPruner(model, torch.rand(2, 3, 16, 16), split="bn3", total_steps=4)
    with pytest.raises(ModelError, match="already has PATROL's masks"):
        PatrolPruner(model, torch.rand(2, 3, 16, 16), split="bn3", total_steps=4)


def test_a_recipe_takes_the_models_own_pretrained_weights(tmp_path: Path) -> None:
    """model.pretrained of a traced custom model: the user's own keys (features.0.weight)."""
    from safetensors.torch import save_file

    from patrol_compress.data import build_data
    from patrol_compress.pipeline import fresh_model
    from patrol_compress.recipe import parse_recipe

    own = mobilenet_v2(num_classes=9)
    with torch.no_grad():
        own.features[0][0].weight.fill_(0.25)
    save_file(
        {k: v.contiguous() for k, v in own.state_dict().items()}, tmp_path / "own.safetensors"
    )
    recipe = tiny_recipe_dict(tmp_path, split=1, budget=None)
    recipe["model"] = {
        "arch": "custom",
        "factory": "patrol_compress.testing.cnns:mobilenet_v2",
        "blocks": ["features.6"],
        "pretrained": str(tmp_path / "own.safetensors"),
    }
    parsed = parse_recipe(recipe)
    data = build_data(parsed.data)
    assert data.num_classes == 9
    model = fresh_model(parsed, data)
    assert torch.equal(model.state_dict()["stage1.features.0.0.weight"], own.features[0][0].weight)
