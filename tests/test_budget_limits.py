"""Budgets a deployment states: MACs, measured latency, several limits at once, round_to."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from patrol_compress.errors import BudgetError, RecipeError
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models import BlockNet, build_model
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.budget import (
    EdgeBudget,
    Plan,
    estimate_cost,
    plan_at,
    ranking_scores,
    resolve_budget,
)
from patrol_compress.pruning.latency import EdgeTimer, LatencyLimit, measure_model_ms
from patrol_compress.pruning.masks import MaskedNorm, iter_masks
from patrol_compress.pruning.remove import EQUIVALENCE_ATOL
from patrol_compress.pruning.structure import BlockStructure, ChannelStructure
from patrol_compress.recipe import BudgetConfig, ModelConfig, parse_recipe
from patrol_compress.testing.tiny import randomize_bn

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
SHAPE = (3, 32, 32)


def tiny(width: float = 0.125) -> BlockNet:
    m = build_model(ModelConfig(width=width, stem="small"), 10).eval()
    randomize_bn(m)
    return m


def random_masks(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_masks(model):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g))


def edge_macs(model: BlockNet, split: int) -> int:
    return count_macs(nn.Sequential(*edge_modules(model, split)), SHAPE)


@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_mac_and_param_limits_both_hold_after_real_removal(granularity: str) -> None:
    """A MAC limit tighter than what the parameter limit leaves binds; both hold."""
    cls = ChannelStructure if granularity == "channel" else BlockStructure
    params_only = tiny()
    st = cls(params_only, 4, 1.0, X)
    random_masks(params_only)
    if granularity == "channel":
        p2 = count_params(edge_modules(tiny(), 2))
        limit = st.remove(EdgeBudget(params=p2), 0.0, X).edge_macs * 3 // 4
    else:  # half-way between the narrowest (every branch gone) and the full edge
        p2 = count_params(edge_modules(tiny(), 4))
        limit = (st.check(EdgeBudget(params=p2)).macs + edge_macs(tiny(), 4)) // 2
    model = tiny()
    st = cls(model, 4, 1.0, X)
    random_masks(model)
    budget = EdgeBudget(params=p2, macs=limit)
    assert st.check(budget).macs <= limit
    removal = st.remove(budget, 0.0, X)
    assert removal.plan_kind == "budget"
    assert removal.edge_params <= p2
    assert removal.edge_macs <= limit
    assert removal.edge_macs == edge_macs(model, 4)  # what metrics.json records is real
    assert removal.equivalence_rel_diff <= EQUIVALENCE_ATOL


def test_mac_limit_below_the_narrowest_edge_names_macs() -> None:
    st = ChannelStructure(tiny(), 4, 1.0, X)
    least = r"MACs > 10 \(patrol.budget.macs must be at least \d+\)$"
    with pytest.raises(BudgetError, match=r"cannot be met at split 4.*" + least):
        st.check(EdgeBudget(macs=10))


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_every_pruned_group_a_multiple(round_to: int) -> None:
    ref = tiny(0.25)
    p2 = count_params(edge_modules(ref, 2))
    before = {n: m.num_features for n, m in ref.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model = tiny(0.25)
    st = ChannelStructure(model, 4, 1.0, X, round_to=round_to)
    random_masks(model)
    removal = st.remove(EdgeBudget(params=p2), 0.0, X)
    assert removal.edge_params <= p2
    assert removal.round_to == round_to
    widths = {
        n: m.num_features
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and n in before
    }
    pruned = {n: w for n, w in widths.items() if w != before[n]}
    assert pruned, "the budget pruned nothing; the test checks nothing"
    assert all(w % round_to == 0 for w in pruned.values()), pruned
    assert not any(isinstance(m, MaskedNorm) for m in model.modules())


@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_latency_limit_is_measured_and_recorded(granularity: str) -> None:
    """A limit any edge meets keeps the static plan and records the measured latency."""
    ref = tiny()
    p2 = count_params(edge_modules(ref, 2 if granularity == "channel" else 4))
    model = tiny()
    st = (ChannelStructure if granularity == "channel" else BlockStructure)(model, 4, 1.0, X)
    assert st.check(EdgeBudget(params=p2, latency=LatencyLimit(ms=1e6, seconds=0.05))).params
    random_masks(model)
    limit = LatencyLimit(ms=1e6, seconds=0.05)
    removal = st.remove(EdgeBudget(params=p2, latency=limit), 0.0, X)
    assert removal.edge_params <= p2
    assert removal.latency_ms is not None and 0 < removal.latency_ms < 1e6
    assert removal.latency == {"limit_ms": 1e6, "runtime": "onnxruntime", "threads": 1, "batch": 1}


def test_impossible_latency_is_a_clear_error() -> None:
    st = ChannelStructure(tiny(), 4, 1.0, X)
    with pytest.raises(BudgetError, match=r"narrowest legal edge.* ms > 1e-09 ms|ms >"):
        st.check(EdgeBudget(latency=LatencyLimit(ms=1e-9, seconds=0.02)))


def test_fit_split_resolves_params_macs_and_latency_of_the_shallower_edge() -> None:
    model = tiny()
    cfg = BudgetConfig(fit_split=2, fit=["params", "macs", "latency"], latency={"seconds": 0.05})
    b = resolve_budget(cfg, model, SHAPE)
    assert b.params == count_params(edge_modules(model, 2))
    assert b.macs == edge_macs(model, 2)
    assert b.latency is not None and b.latency.ms > 0
    half = resolve_budget(
        BudgetConfig(fit_split=2, fit=["params", "macs"], fit_fraction=0.5), model, SHAPE
    )
    assert (half.params, half.macs) == (int(b.params * 0.5), int(b.macs * 0.5))
    cfg_lat = BudgetConfig(fit_split=2, fit=["params", "macs"], fit_fraction={"macs": 0.5})
    per_limit = resolve_budget(cfg_lat, model, SHAPE)
    assert (per_limit.params, per_limit.macs) == (b.params, int(b.macs * 0.5))
    only_macs = resolve_budget(BudgetConfig(macs=123), model, SHAPE)
    assert (only_macs.params, only_macs.macs, only_macs.latency) == (None, 123, None)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"fit_split": 2, "params": 5}, "at most one of fit_split, params, bytes"),
        ({"fit": ["macs"]}, "fit needs fit_split"),
        ({"macs": 5, "fit_fraction": 0.5}, "fit_fraction needs fit_split"),
        ({"fit_split": 2, "fit_fraction": {"latency": 1.5}}, "fit_fraction"),
        ({"fit_split": 2, "fit_fraction": {"speed": 0.5}}, "fit_fraction"),
        ({"fit_split": 2, "fit": ["macs"], "macs": 5}, "macs is given twice"),
        ({"latency": {"threads": 2}}, "needs a limit"),
        ({"macs": 0}, "macs"),
        ({"latency_ms": 1, "latency": {"runtime": "tflite"}}, "runtime"),
    ],
)
def test_bad_budgets_name_the_field(budget: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"name": "b", "patrol": {"split": 4, "budget": budget}})


def test_round_to_is_a_recipe_setting() -> None:
    r = parse_recipe({"name": "r", "patrol": {"round_to": 8}})
    assert r.patrol.round_to == 8
    with pytest.raises(RecipeError, match="round_to"):
        parse_recipe({"name": "r", "patrol": {"round_to": 0}})


def test_rank_per_cost_removes_mac_heavy_channels_first_and_meets_the_limits() -> None:
    """patrol.rank mask_per_cost: equal masks, a MAC limit: the budget's costliest go first.

    With every mask equal, ranking by mask leaves the order to the weight tie-break;
    ranking by mask per share of the limit removes the channels that free the
    most MACs first, so it meets the same limit with fewer channels removed, and
    the real removal still meets every limit.
    """
    from patrol_compress.pruning.budget import cost_shares

    full = edge_macs(tiny(), 4)
    budget = EdgeBudget(params=count_params(edge_modules(tiny(), 4)), macs=full * 6 // 10)
    removed = {}
    for per_cost in (False, True):
        model = tiny()
        st = ChannelStructure(model, 4, 1.0, X, per_cost=per_cost)
        shares = cost_shares(model, 4, st.mg, budget, st.spatial)
        assert max(shares) > min(shares) > 0  # early, high-resolution groups cost more
        removal = st.remove(budget, 0.0, X)
        assert removal.edge_macs <= budget.macs and removal.edge_params <= budget.params
        removed[per_cost] = removal.removed  # channels removed
    assert removed[True] < removed[False]


# ------------------------------------------------- a latency limit that binds (issue 24 item 5)

MS_PER_MAC = 1e-6
"""The fake timer's latency: 1 ms per million MACs of the candidate edge."""


class MacTimer:
    """A fake :data:`EdgeTimer`: latency is a fixed function of the candidate edge (its MACs).

    Monotone in the removal, as real latency is only up to noise, so the search's
    choice is fully determined; records every candidate it times, in order.
    """

    def __init__(self) -> None:
        self.timed: list[float] = []

    def __call__(
        self, model: BlockNet, split: int, shape: tuple[int, ...], limit: LatencyLimit
    ) -> float:
        ms = count_macs(nn.Sequential(*edge_modules(model, split)), shape) * MS_PER_MAC
        self.timed.append(ms)
        return ms


def _masked(timer: EdgeTimer, width: float = 0.125, x: torch.Tensor = X) -> ChannelStructure:
    model = tiny(width)
    st = ChannelStructure(model, 4, 1.0, x, timer=timer)
    random_masks(model)
    return st


def _lowest_fitting_plan(st: ChannelStructure, limit_ms: float) -> tuple[Plan, int]:
    """By brute force: the plan at the lowest candidate threshold whose edge fits, and how
    many candidates there are (what the search must find without timing them all)."""
    scores = ranking_scores(st.mg)
    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    cands = [float(c) for c in torch.unique(finite[finite > 0.0]).sort().values]
    for c in cands:
        plan = plan_at(scores, c, 1)
        if estimate_cost(st.model, 4, st.mg, plan, st.spatial).macs * MS_PER_MAC <= limit_ms:
            return plan, len(cands)
    raise AssertionError("no candidate fits; the limit is below the narrowest edge")


def test_a_binding_latency_limit_is_met_as_timed_by_the_smallest_removal() -> None:
    """A limit between the unpruned and the narrowest edge: the search removes exactly as
    much as it must, times O(log n) candidates, and the edge it leaves is the one it timed."""
    unpruned_ms = edge_macs(tiny(), 4) * MS_PER_MAC
    timer = MacTimer()
    st = _masked(timer)
    narrowest = st.check(EdgeBudget(latency=LatencyLimit(ms=1e6)))
    assert timer.timed == [narrowest.macs * MS_PER_MAC]  # it timed the narrowest edge, as built
    limit_ms = (unpruned_ms + timer.timed[0]) / 2
    budget = EdgeBudget(latency=LatencyLimit(ms=limit_ms))
    expected, candidates = _lowest_fitting_plan(st, limit_ms)

    timer.timed.clear()
    planned = st.plan(budget, 0.0)
    assert planned.plan == expected
    assert planned.latency_ms is not None
    assert narrowest.macs * MS_PER_MAC < planned.latency_ms <= limit_ms  # binds, not maximal
    assert timer.timed[0] == unpruned_ms > limit_ms  # nothing removed: too slow, so it searched
    assert len(timer.timed) <= 2 + math.ceil(math.log2(candidates))  # binary, not a scan

    removal = st.remove(budget, 0.0, X)
    assert removal.plan_kind == "budget"
    assert removal.latency_ms == planned.latency_ms <= limit_ms  # met as measured while planning
    assert removal.edge_macs * MS_PER_MAC == removal.latency_ms  # ... on the edge it left
    assert removal.equivalence_rel_diff <= EQUIVALENCE_ATOL


def test_the_latency_search_is_deterministic_given_the_timings() -> None:
    """Same model, masks and timer function: the same candidates timed, the same plan."""
    runs = []
    for _ in range(2):
        timer = MacTimer()
        st = _masked(timer)
        limit_ms = (edge_macs(tiny(), 4) + st.check(EdgeBudget()).macs) * MS_PER_MAC / 2
        planned = st.plan(EdgeBudget(latency=LatencyLimit(ms=limit_ms)), 0.0)
        runs.append((planned.plan, planned.latency_ms, timer.timed))
    assert runs[0] == runs[1]
    assert any(runs[0][0])  # the limit made it remove channels


def test_a_binding_latency_limit_is_met_with_the_real_timer() -> None:
    """The default timer (export + bench): a limit halfway between the unpruned edge's and
    the narrowest edge's measured latency. Asserts only what the search itself measured."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    settings = LatencyLimit(ms=1e6, seconds=0.1)
    timed: list[float] = []

    def timer(model: BlockNet, split: int, shape: tuple[int, ...], limit: LatencyLimit) -> float:
        timed.append(measure_model_ms(model, split, shape, limit))
        return timed[-1]

    unpruned_ms = measure_model_ms(tiny(0.25), 4, (3, 64, 64), settings)
    st = _masked(timer, 0.25, x)
    st.check(EdgeBudget(latency=settings))
    limit = dataclasses.replace(settings, ms=(unpruned_ms + timed[-1]) / 2)
    removal = st.remove(EdgeBudget(latency=limit), 0.0, x)
    assert removal.latency_ms is not None and removal.latency_ms <= limit.ms
    assert removal.latency_ms in timed[1:]  # the search's own measurement, not a new one
