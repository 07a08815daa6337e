"""Budgets a deployment states: MACs, measured latency, several limits at once, round_to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from patrol_compress.errors import BudgetError, RecipeError
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models import BlockNet, build_model
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.budget import EdgeBudget, LatencyLimit, resolve_budget
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
    with pytest.raises(BudgetError, match=r"cannot be met at split 4.*MACs > 10$"):
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
