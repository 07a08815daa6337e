"""PatrolPruner: PATROL on a user's own CNN (own head, own weights) in a plain PyTorch loop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.errors import BudgetError, ModelError, PatrolError, UsageError
from patrol_compress.metrics.flops import count_params
from patrol_compress.pruner import PatrolPruner
from patrol_compress.pruning.masks import ChannelMask, MaskedNorm
from patrol_compress.testing.tiny import randomize_bn, tiny_mobilenet


class Basic(nn.Module):
    """A user's residual block (not ours: no residual()/shortcut() methods)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.down(x))


class UserResNet(nn.Module):
    """A ResNet-style classifier with its own head (pool, flatten, fc -> logits)."""

    def __init__(self, classes: int = 4, flatten_module: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layer1 = Basic(8, 8, 1)
        self.layer2 = Basic(8, 16, 2)
        self.layer3 = Basic(16, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten_module = flatten_module
        if flatten_module:
            self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.pool(x)
        x = self.flatten(x) if self.flatten_module else torch.flatten(x, 1)
        return self.fc(x)


BLOCKS: dict[str, Any] = {
    "stem": ["stem"],
    "stages": [["layer1"], ["layer2"], ["layer3"]],
    "head": ["pool", "flatten", "fc"],
}
CONFIG: dict[str, Any] = {
    "mask_lr": 0.01,
    "lambda1": 0.5,
    "lambda2": 1.0,
    "lipschitz": {"alphas": [0.5, 0.1, 0.01], "sigma": 0.1},
    "adversarial": {"beta": 1e-3, "adversary_width": 16},
}


def quadrant_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: a bright square in quadrant k of a noisy 16x16 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, :, r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6] += 0.7
    return x, y


def trained_user_resnet() -> UserResNet:
    torch.manual_seed(0)
    model = UserResNet()
    x, y = quadrant_data(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        for i in range(0, 64, 16):
            loss = F.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_user_resnet_keeps_weights_and_head_and_prunes_under_budget(tmp_path: Path) -> None:
    model = trained_user_resnet()
    x, y = quadrant_data(32, seed=1)
    model.eval()
    with torch.no_grad():
        before = model(x)
    fc_weight = model.fc.weight.detach().clone()
    trained = copy.deepcopy(model)
    unpruned_edge = count_params([model.stem, model.layer1, model.layer2])
    budget = unpruned_edge // 2
    steps = 12
    pruner = PatrolPruner(
        model,
        x[:2],
        split="layer2",
        budget=budget,
        blocks=BLOCKS,
        total_steps=steps,
        replan_every=4,
        config=CONFIG,
    )
    assert isinstance(model.stem[1], MaskedNorm)  # the masks are in the user's own model
    assert torch.equal(model.layer2.conv2.weight, trained.layer2.conv2.weight)
    # Masks start at 1: without a budget to steer, the trained network is unchanged.
    PatrolPruner(trained, x[:2], split="layer2", blocks=BLOCKS, config=CONFIG)
    with torch.no_grad():
        assert torch.equal(trained(x), before)
    assert pruner.edge_params() == unpruned_edge

    opt = torch.optim.Adam(pruner.weights(), lr=1e-3)
    assert not {id(p) for p in pruner.weights()} & {
        id(m.weight) for m in model.modules() if isinstance(m, ChannelMask)
    }
    model.train()
    for i in range(steps):
        xb, yb = x[(i * 8) % 32 : (i * 8) % 32 + 8], y[(i * 8) % 32 : (i * 8) % 32 + 8]
        loss = F.cross_entropy(model(xb), yb) + pruner.privacy_loss(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    assert set(pruner.last_terms) == {"k1", "k2", "lip", "adv"}
    assert pruner.steps == steps

    pruned = pruner.prune()
    assert pruned is model and pruner.removal is not None
    assert pruner.edge_params() <= budget
    assert pruner.removal.equivalence_rel_diff <= 1e-5
    assert not any(isinstance(m, (ChannelMask, MaskedNorm)) for m in model.modules())
    assert isinstance(model.stem[1], nn.BatchNorm2d)
    assert model.fc.weight.shape == fc_weight.shape  # the user's head, all classes
    assert model.layer2.conv2.out_channels < 16  # the edge lost channels
    model.eval()
    edge, cloud = pruner.partitions()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (32, 4)  # the user's own logits
        assert torch.equal(cloud(edge(x)), out)
    manifest = pruner.export(tmp_path / "onnx")
    assert (tmp_path / "onnx" / "edge.onnx").is_file() and (
        tmp_path / "onnx" / "cloud.onnx"
    ).is_file()
    assert manifest["split"] == 2
    # After prune: the privacy terms stay usable for a recovery fine-tune; step() is a no-op.
    model.train()
    assert torch.isfinite(pruner.privacy_loss(x[:4]))
    pruner.step()


def test_mobilenet_style_with_an_embedding_head_at_the_last_split() -> None:
    net = tiny_mobilenet(num_classes=0, width=8)
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("embed", nn.Linear(32, 12))
    randomize_bn(net)
    blocks = {
        "stem": ["stem_conv", "stem_bn", "stem_act"],
        "stages": [["s1"], ["s2"], ["s3"]],
        "head": ["pool", "flat", "embed"],
    }
    x = torch.rand(8, 3, 32, 32)
    target = torch.randn(8, 12)
    cfg = {**CONFIG, "adversarial": {"enabled": False}}
    pruner = PatrolPruner(
        net, x[:2], split=3, budget={"fit_split": 2}, blocks=blocks, total_steps=6, config=cfg
    )
    opt = torch.optim.SGD(pruner.weights(), lr=1e-3)
    stats = net.s1[0].conv[1].bn.running_mean.clone()  # an edge BN, now inside its mask
    net.train()
    for _ in range(6):
        loss = F.mse_loss(net(x), target) + pruner.privacy_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    assert "adv" not in pruner.last_terms
    # As in the recipe path, the edge's BNs keep their statistics during PATROL.
    assert torch.equal(net.s1[0].conv[1].bn.running_mean, stats)
    pruner.prune()
    assert pruner.budget is not None and pruner.budget.params is not None
    assert pruner.edge_params() <= pruner.budget.params
    assert net.embed.out_features == 12 and net.embed.in_features <= 32
    net.eval()
    edge, cloud = pruner.partitions()
    with torch.no_grad():
        assert torch.equal(cloud(edge(x)), net(x))
    pruner.close()  # the edge's BNs follow train() again
    bn = net.s1[0].conv[1]
    assert isinstance(bn, nn.BatchNorm2d)
    before = bn.running_mean.clone()
    net.train()
    net(x)
    assert not torch.equal(bn.running_mean, before)


class TupleOut(UserResNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return (out, out)  # type: ignore[return-value]


class NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(self.c2(self.c1(x)))


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "words"),
    [
        (UserResNet, {"blocks": None}, ModelError, "blocks: needed for a UserResNet"),
        (
            lambda: UserResNet(flatten_module=False),
            {"blocks": {**BLOCKS, "head": ["pool", "fc"]}},
            ModelError,
            "put functional steps (e.g. torch.flatten) in modules",
        ),
        (UserResNet, {"blocks": {**BLOCKS, "head": ["pool", "fc"]}}, ModelError, "leaves out"),
        (UserResNet, {"blocks": {**BLOCKS, "head": ["pool", "flatten", "fcx"]}}, ModelError, "fcx"),
        (TupleOut, {}, ModelError, "returns tuple in eval mode"),
        (UserResNet, {"split": "layer9"}, ModelError, "not a stage"),
        (UserResNet, {"split": 4}, ModelError, "stages 1..3"),
        (UserResNet, {"budget": 10, "total_steps": 5}, BudgetError, "cannot be met"),
        (UserResNet, {"budget": 3000}, UsageError, "total_steps"),
        (UserResNet, {"config": {"split": 2}}, UsageError, "as PatrolPruner arguments"),
        (UserResNet, {"config": {"mask_lr": -1}}, PatrolError, "config.mask_lr"),
        (
            NoBN,
            {"blocks": {"stem": ["c1"], "stages": [["c2"]], "head": ["flat"]}, "split": 1},
            ModelError,
            "no BatchNorm",
        ),
    ],
)
def test_a_model_that_cannot_be_pruned_is_one_line(
    make: Any, kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    args: dict[str, Any] = {"split": 2, "blocks": BLOCKS, **kwargs}
    with pytest.raises(error) as info:
        PatrolPruner(make(), torch.rand(2, 3, 16, 16), **args)
    assert words in str(info.value)
    assert "\n" not in str(info.value)
