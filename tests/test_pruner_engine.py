"""The engine's own protocol: checkpoints resume exactly, the surrogate follows its schedule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from patrol_compress import PatrolPruner
from patrol_compress.errors import PatrolWarning, UsageError
from patrol_compress.testing.cnns import functional_net

from .helpers import shape_images

CONFIG: dict[str, Any] = {
    "lipschitz": {"alphas": [0.05], "sigma": 0.1},
    "adversarial": {"beta": 1e-3, "adversary_width": 8, "adversary_every": 2},
}


def _pruner(model: torch.nn.Module, x: torch.Tensor) -> PatrolPruner:
    return PatrolPruner(model, x[:2], split="bn3", budget=0.5, total_steps=8, config=CONFIG)


def _epoch(pruner: PatrolPruner, opt: torch.optim.Optimizer, batches: list[Any]) -> None:
    pruner.begin_epoch(batches)
    for x, y in batches:
        out, privacy = pruner(x)
        opt.zero_grad()
        pruner.backward(F.cross_entropy(out, y) + privacy)
        opt.step()
        pruner.step()


def test_state_dict_resumes_bit_for_bit() -> None:
    """Masks, FISTA, the steering's plan, the surrogate and its Adam, the counters."""
    x, y = shape_images(32, seed=0, size=16)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    torch.manual_seed(0)
    start = functional_net(num_classes=4)
    straight = copy.deepcopy(start)
    a = _pruner(straight, x)
    opt_a = torch.optim.Adam(a.weights(), lr=1e-3)
    torch.manual_seed(1)
    _epoch(a, opt_a, batches[:2] * 2)
    saved = {"model": copy.deepcopy(straight.state_dict()), "pruner": a.state_dict()}
    saved["opt"] = copy.deepcopy(opt_a.state_dict())
    rng = torch.get_rng_state()
    _epoch(a, opt_a, batches[:2] * 2)

    resumed = copy.deepcopy(start)
    b = _pruner(resumed, x)
    opt_b = torch.optim.Adam(b.weights(), lr=1e-3)
    resumed.load_state_dict(saved["model"])
    b.load_state_dict(saved["pruner"])
    opt_b.load_state_dict(saved["opt"])
    assert b.steps == 4 and b.epoch == 1 and b.surrogate is not None
    torch.set_rng_state(rng)
    _epoch(b, opt_b, batches[:2] * 2)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert a.last_terms == b.last_terms


def test_the_surrogate_is_refitted_on_its_schedule() -> None:
    x, y = shape_images(16, seed=0, size=16)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    pruner = _pruner(functional_net(num_classes=4), x)
    weights: list[torch.Tensor] = []
    for _ in range(3):
        pruner.begin_epoch(batches)
        assert pruner.surrogate is not None
        weights.append(torch.cat([p.detach().flatten() for p in pruner.surrogate.parameters()]))
    assert torch.equal(weights[0], weights[1])  # epoch 1: adversary_every 2, no refit
    assert not torch.equal(weights[1], weights[2])  # epoch 2: refitted
    with pytest.raises(UsageError, match="pass the epoch's batches"):
        pruner.begin_epoch()  # epoch 3 is not due...
        pruner.begin_epoch()  # ...epoch 4 is


def test_a_loop_without_epochs_gets_one_warning_and_an_online_surrogate() -> None:
    x, y = shape_images(16, seed=0, size=16)
    pruner = _pruner(functional_net(num_classes=4), x)
    with pytest.warns(PatrolWarning, match="without begin_epoch"):
        pruner.privacy_loss(x[:8])
    assert set(pruner.last_terms) == {"k1", "lip", "adv"}
