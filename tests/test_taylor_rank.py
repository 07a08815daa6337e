"""patrol.rank taylor / taylor_per_cost: gate-Taylor importance drives the budget's plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from patrol_compress.metrics.flops import count_params
from patrol_compress.models import BlockNet, build_model
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.budget import EdgeBudget, estimate_cost
from patrol_compress.pruning.masks import ChannelMask, MaskedNorm
from patrol_compress.pruning.patrol import MaskSteering, PatrolParts
from patrol_compress.pruning.structure import ChannelStructure, make_structure
from patrol_compress.pruning.taylor import TaylorMeter
from patrol_compress.recipe import ModelConfig, parse_recipe
from patrol_compress.testing.tiny import randomize_bn

X = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(6))


def tiny() -> BlockNet:
    m = build_model(ModelConfig(width=0.125, stem="small"), 10).eval()
    randomize_bn(m)
    return m


def loss_of(model: nn.Module) -> torch.Tensor:
    out = model(X)
    logits = out[0] if isinstance(out, tuple) else out
    return nn.functional.cross_entropy(logits, Y)


def backward(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    loss_of(model).backward()


def gates(group: object) -> list[tuple[ChannelMask, list[int], list[int]]]:
    return [
        (it.dep.target.module, list(it.idxs), list(it.root_idxs))
        for it in group  # type: ignore[attr-defined]
        if isinstance(it.dep.target.module, ChannelMask)
    ]


def test_importance_is_the_squared_loss_change_of_removing_the_channel_to_first_order() -> None:
    """Scaling every mask of a root channel by (1 - eps) changes the loss by -eps * sum m dL/dm.

    Checked by a finite difference on the residual group (one channel gated in
    several blocks), so the meter must sum the gates of the whole group.
    """
    model = tiny()
    st = ChannelStructure(model, 4, 1.0, X[:2], importance="taylor")
    assert st.meter is not None
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ChannelMask):
                m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    backward(model)
    st.observe()
    k = max(range(len(st.mg.groups)), key=lambda i: len(gates(st.mg.groups[i])))
    assert len(gates(st.mg.groups[k])) > 1  # a residual stream: several gates
    base = float(loss_of(model).detach())
    eps = 1e-3
    for c in (0, 3):
        with torch.no_grad():
            saved = [(m, m.weight.detach().clone()) for m, _, _ in gates(st.mg.groups[k])]
            for m, idxs, roots in gates(st.mg.groups[k]):
                for i, r in zip(idxs, roots, strict=True):
                    if r == c:
                        m.weight[i] *= 1 - eps
            change = (float(loss_of(model).detach()) - base) / eps
            for m, w in saved:
                m.weight.copy_(w)
        assert float(st.meter.scores()[k][c]) == pytest.approx(change**2, rel=0.05)


def test_dead_channels_are_planned_first() -> None:
    """Channels that cannot change the output have importance 0: the budget removes them first."""
    model = tiny()
    st = ChannelStructure(model, 4, 1.0, X[:2], importance="taylor")
    k = next(i for i, g in enumerate(st.mg.groups) if len(gates(g)) == 1)  # a block's inner group
    mask, idxs, roots = gates(st.mg.groups[k])[0]
    norm = next(m for m in model.modules() if isinstance(m, MaskedNorm) and m.mask is mask)
    dead = [roots[1], roots[4]]
    with torch.no_grad():
        for r in dead:
            norm.bn.weight[idxs[roots.index(r)]] = 0.0
            norm.bn.bias[idxs[roots.index(r)]] = 0.0
    for _ in range(2):
        backward(model)
        st.observe()
    scores = st.meter.scores()  # type: ignore[union-attr]
    assert all(float(scores[k][r]) == 0.0 for r in dead)
    # (The random tiny net has other channels that a ReLU silences on X: also 0.)
    plan = [sorted(torch.nonzero(s == 0).flatten().tolist()) for s in scores]
    assert set(dead) <= set(plan[k]) and sum(map(len, plan)) < sum(len(s) for s in scores) // 2
    params = estimate_cost(model, 4, st.mg, plan).params
    assert st.plan(EdgeBudget(params=params), 0.0).plan == plan
    # Ranked by mask (all equal), the weight tie-break picks other channels.
    by_mask = ChannelStructure(tiny(), 4, 1.0, X[:2])
    assert by_mask.plan(EdgeBudget(params=params), 0.0).plan != plan


def test_a_taylor_ranking_does_not_steer_before_it_has_observed_a_step() -> None:
    model = tiny()
    cfg = parse_recipe({"name": "t", "patrol": {"rank": "taylor_per_cost"}}).patrol
    st = make_structure("channel", model, 4, 1.0, X[:2], 1, cfg.rank)
    assert isinstance(st, ChannelStructure) and st.meter is not None and st.per_cost
    budget = EdgeBudget(params=count_params(edge_modules(tiny(), 2)))
    steering = MaskSteering(PatrolParts(model, st, None), cfg, budget, total_steps=10)
    steering.begin_epoch(0)
    assert steering.marks == {}  # nothing observed: the first epoch only observes
    backward(model)
    steering.observe()
    steering.begin_epoch(5)
    assert steering.marks  # planned from what it observed
    assert st.meter.steps == 0  # and a fresh window opened for the next plan


def test_meter_state_round_trips_and_refuses_other_groups() -> None:
    model = tiny()
    st = ChannelStructure(model, 4, 1.0, X[:2], importance="taylor")
    backward(model)
    st.observe()
    again = TaylorMeter(st.mg)
    again.restore(st.meter.state())  # type: ignore[union-attr]
    assert again.steps == 1
    for a, b in zip(again.scores(), st.meter.scores(), strict=True):  # type: ignore[union-attr]
        assert torch.equal(a, b)
    other = ChannelStructure(build_model(ModelConfig(width=0.25, stem="small"), 10), 4, 1.0, X[:2])
    with pytest.raises(ValueError, match="channel groups changed"):
        again.bind(other.mg)
