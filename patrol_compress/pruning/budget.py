"""Edge budgets: what the edge partition may weigh and cost, and removal plans that meet it.

A budget is one or more limits, all of which must hold after removal
(:class:`EdgeBudget`):

* ``params``: weights the edge carries (the recipe's ``params``, ``bytes`` at 4
  bytes per fp32 parameter, or the unpruned size of a shallower ``fit_split``).
  Parameters count trainable weights and BN affine terms, as the exported graph
  carries them; masks are folded away and do not count.
* ``macs``: multiply-accumulates of the edge's convolutions and linear layers
  for one image (counted as :func:`~patrol_compress.metrics.flops.count_macs`
  does). A parameter budget keeps early, high-resolution channels, which are
  cheap in parameters and expensive in compute (measured on the Fashion-MNIST
  32 px recipe: PATROL's split-4 edge within split 2's *parameters* still had
  12.3M MACs against 17.9M, ratio 0.69, and on the 64 px quickstart onnxruntime
  ran it 17-20% slower than split 2); a MAC limit makes the plan pay for them.
* ``latency``: the median latency of the candidate edge measured on this
  machine (:mod:`patrol_compress.pruning.latency`) with a stated runtime,
  thread count and batch. Measured, not modelled, because kernel choice and
  per-layer overhead decide latency at these sizes, not MACs alone.
* ``uplink``: bits per image crossing the split, channels x positions x bits
  per value (:class:`UplinkLimit`). Only the channels that cross the split
  (the split stage's stream: the groups a cloud layer or the uplink quantizer
  reads) count, so this limit is met by removing the lowest-ranked of *those*
  channels first (:func:`uplink_plan`), before the global threshold meets the
  other limits: a threshold low enough for the uplink would cut every other
  group just as deep.

:func:`estimate_cost` predicts the edge's parameters and MACs after a plan
*without* pruning anything, from the dependency groups (which layer loses which
in/out channels) and each layer's output resolution; tests check it against
real removal. :func:`plan_for_budget` finds the smallest global threshold on the
channel scores whose removal meets every limit (scores are max |mask| per
coupled channel; a tiny weight-magnitude term breaks ties, so a budget can be
met even before masks differ). Parameters and MACs only grow as the threshold
falls, so a binary search finds it; measured latency is monotone only up to
noise, so it is searched last, above the threshold the static limits need, and
the chosen plan's measurement is reported.

``round_to`` keeps every pruned group's width a multiple of N (what
torch-pruning's ``round_to`` does): after the threshold a group keeps the
next multiple of N above what it would keep (its highest-scored channels), or
all its channels when it has fewer than N. Rounding only ever keeps more, so
the search runs on rounded plans and the budget still holds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.config.recipe import BudgetConfig
from patrol_compress.errors import BudgetError
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.latency import LatencyLimit, measure_model_ms
from patrol_compress.pruning.masks import ChannelMask
from patrol_compress.pruning.remove import MaskGroups, removable

BYTES_PER_PARAM = 4
TIE_BREAK = 1e-4

Plan = list[list[int]]
"""Root channel indices to remove, one list per mask group."""


@dataclass(frozen=True)
class UplinkLimit:
    """At most ``bits`` per image may cross the split: channels x ``positions`` x ``value_bits``.

    ``value_bits`` is the quantized uplink's bits per value (32 for fp32),
    ``positions`` the edge output's H x W.
    """

    bits: int
    value_bits: int
    positions: int

    def channels(self) -> int:
        """The most crossing channels that fit."""
        return self.bits // (self.value_bits * self.positions)

    def describe(self) -> str:
        return (
            f"{self.bits} bits per image ({self.positions} positions x {self.value_bits} bits: "
            f"at most {self.channels()} channels)"
        )


@dataclass(frozen=True)
class Crossing:
    """Which mask groups' channels cross the split, and how many crossing channels none owns."""

    groups: tuple[int, ...]
    fixed: int

    def channels(self, mg: MaskGroups, plan: Plan) -> int:
        """Crossing channels left after ``plan``."""
        kept = sum(len(mg.groups[g][0].idxs) - len(plan[g]) for g in self.groups)
        return self.fixed + kept


@dataclass(frozen=True)
class EdgeBudget:
    """Every limit the edge must meet after removal; each one given must hold.

    ``params``: weights the edge carries (``fit_split`` and ``bytes`` resolve to
    it); ``macs``: multiply-accumulates per image; ``latency``: a measured bound.
    """

    params: int | None = None
    macs: int | None = None
    latency: LatencyLimit | None = None
    uplink: UplinkLimit | None = None

    def as_dict(self) -> dict[str, object]:
        lat = self.latency
        up = self.uplink
        return {
            "uplink_bits": up.bits if up else None,
            "uplink_value_bits": up.value_bits if up else None,
            "params": self.params,
            "bytes": self.params * BYTES_PER_PARAM if self.params is not None else None,
            "macs": self.macs,
            "latency_ms": lat.ms if lat else None,
            "latency": (
                {"runtime": lat.runtime, "threads": lat.threads, "batch": lat.batch}
                if lat
                else None
            ),
        }


@dataclass(frozen=True)
class Cost:
    """What an edge weighs and computes: parameters and MACs per image, crossing channels."""

    params: int
    macs: int
    uplink_channels: int | None = None

    def violations(self, budget: EdgeBudget) -> list[str]:
        """The static limits this cost breaks, as readable phrases naming the recipe field
        (a user fixing an unmeetable budget needs the field and the least it must be)."""
        out = []
        if budget.params is not None and self.params > budget.params:
            out.append(
                f"{self.params} parameters > {budget.params} ({_least('params', self.params)})"
            )
        if budget.macs is not None and self.macs > budget.macs:
            out.append(f"{self.macs} MACs > {budget.macs} ({_least('macs', self.macs)})")
        up = budget.uplink
        if up is not None and self.uplink_channels is not None:
            sent = self.uplink_channels * up.positions * up.value_bits
            if sent > up.bits:
                out.append(
                    f"{sent} uplink bits per image > {up.bits} ({_least('uplink_bits', sent)})"
                )
        return out


def _least(field: str, value: int) -> str:
    return f"patrol.budget.{field} must be at least {value}"


@dataclass
class PlanResult:
    """A removal plan, its predicted cost and (with a latency limit) its measured latency."""

    plan: Plan
    cost: Cost
    latency_ms: float | None = None


Measure = Callable[[Plan], float]
"""Measured median latency (ms) of the edge a plan would leave."""


def layer_spatial(modules: Sequence[nn.Module], example: torch.Tensor) -> dict[int, int]:
    """Per conv/linear layer (by id): output elements per output channel for one image.

    The resolution does not change when channels are removed, so one forward of
    the unpruned edge gives what :func:`estimate_cost` needs for every plan.
    """
    spatial: dict[int, int] = {}

    def hook(m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        conv = isinstance(m, nn.modules.conv._ConvNd)
        width = int(getattr(m, "out_channels" if conv else "out_features"))
        spatial[id(m)] = int(out[0].numel()) // max(width, 1)

    layers = [
        m
        for top in modules
        for m in top.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    handles = [m.register_forward_hook(hook) for m in layers]
    modes = {m: m.training for top in modules for m in top.modules()}
    try:
        x = example[:1]
        with torch.no_grad():
            for top in modules:
                top.eval()
                x = top(x)
    finally:
        for h in handles:
            h.remove()
        for m, was in modes.items():
            m.training = was
    return spatial


def _drops(mg: MaskGroups, plan: Plan) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Per layer (by id), the out- and in-channels a plan removes."""
    out_drop: dict[int, set[int]] = defaultdict(set)
    in_drop: dict[int, set[int]] = defaultdict(set)
    for group, idxs in zip(mg.groups, plan, strict=True):
        chosen = set(idxs)
        if not chosen:
            continue
        for item in group:
            local = {item.idxs[j] for j, r in enumerate(item.root_idxs) if r in chosen}
            layer = item.dep.target.module
            if mg.graph.is_out_channel_pruning_fn(item.dep.handler):
                out_drop[id(layer)] |= local
            else:
                in_drop[id(layer)] |= local
    return out_drop, in_drop


def estimate_cost(
    model: BlockNet,
    split: int,
    mg: MaskGroups,
    plan: Plan,
    spatial: dict[int, int] | None = None,
    crossing: Crossing | None = None,
) -> Cost:
    """Edge parameters and MACs after removing ``plan`` (MACs need ``spatial``, else 0),
    and the crossing channels left (with ``crossing``)."""
    out_drop, in_drop = _drops(mg, plan)
    params = macs = 0
    for top in edge_modules(model, split):
        for m in top.modules():
            p, mac = layer_cost(m, out_drop.get(id(m), set()), in_drop.get(id(m), set()))
            params += p
            if spatial is not None:
                macs += mac * spatial.get(id(m), 0)
    return Cost(params, macs, None if crossing is None else crossing.channels(mg, plan))


def estimate_params(model: BlockNet, split: int, mg: MaskGroups, plan: Plan) -> int:
    """Edge parameters after removing ``plan`` (root channel indices per group)."""
    return estimate_cost(model, split, mg, plan).params


def layer_cost(m: nn.Module, out_d: set[int], in_d: set[int]) -> tuple[int, int]:
    """(parameters, MACs per output position) of one layer once channels are dropped."""
    if isinstance(m, nn.Conv2d):
        out_c = m.out_channels - len(out_d)
        in_c = m.in_channels - len(in_d)
        kk = m.kernel_size[0] * m.kernel_size[1]
        per_out = kk if m.groups > 1 and m.groups == m.in_channels else (in_c // m.groups) * kk
        n = out_c * per_out
        return n + (out_c if m.bias is not None else 0), n
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        n = m.num_features - len(out_d | in_d)
        return (2 * n if m.affine else 0), 0
    if isinstance(m, nn.Linear):
        out_f, in_f = m.out_features - len(out_d), m.in_features - len(in_d)
        return out_f * in_f + (out_f if m.bias is not None else 0), out_f * in_f
    if isinstance(m, ChannelMask):
        return 0, 0
    return sum(p.numel() for p in m.parameters(recurse=False)), 0


def ranking_scores(mg: MaskGroups) -> list[torch.Tensor]:
    """Mask scores with a small weight-magnitude tie-break (finite groups only)."""
    mag = tp.importance.GroupMagnitudeImportance(p=2, normalizer="max")
    out = []
    for g, s in zip(mg.groups, mg.scores(), strict=True):
        if torch.isinf(s).any():
            out.append(s)
            continue
        tie = mag(g)
        tie = tie / tie.max().clamp_min(1e-12) if tie is not None else torch.zeros_like(s)
        out.append(s + TIE_BREAK * tie.cpu().float())
    return out


def cost_shares(
    model: BlockNet,
    split: int,
    mg: MaskGroups,
    budget: EdgeBudget,
    spatial: dict[int, int] | None,
) -> list[float]:
    """Per group, the share of the budget one of its channels uses (mean 1 over the groups).

    A channel's share is the parameters it carries over the parameter limit
    plus the MACs it costs over the MAC limit (the limits the budget has).
    Dividing the ranking scores by it is the greedy knapsack rule: remove
    first what gives least importance per unit of budget. At 224 px a
    parameter limit alone ranks a 112x112 stem channel (few weights, many
    MACs) as cheap to keep; with a MAC limit it is among the dearest.

    Caveat (measured): the rule is only as good as the importance. When the
    budget plans, at the start of the stage, the masks are still equal, so
    the order is the cost order, and the dearest channels are the residual
    streams (one stream channel feeds every convolution of its stage). On the
    224 px half-width ResNet-18 it cut three streams to 8 channels: rank-1
    41.4% against 91.7% by mask. A gate-Taylor importance in its place (the
    first-order loss change of zeroing the channel) was tried and gave 59.7%
    at 0.94 of split 2's MACs, so neither is a default.
    """
    none: Plan = [[] for _ in mg.groups]
    full = estimate_cost(model, split, mg, none, spatial)
    raw: list[float] = []
    for i, s in enumerate(mg.scores()):
        if torch.isinf(s).any() or len(s) < 2:
            raw.append(0.0)
            continue
        one = [list(p) for p in none]
        one[i] = [0]
        c = estimate_cost(model, split, mg, one, spatial)
        share = 0.0
        if budget.params:
            share += (full.params - c.params) / budget.params
        if budget.macs:
            share += (full.macs - c.macs) / budget.macs
        raw.append(share)
    positive = [r for r in raw if r > 0]
    mean = sum(positive) / len(positive) if positive else 1.0
    # A group whose channels free nothing is ranked as if it cost the least.
    floor = min(positive) / mean if positive else 1.0
    return [r / mean if r > 0 else floor for r in raw]


def round_plan(scores: torch.Tensor, idxs: list[int], round_to: int) -> list[int]:
    """``idxs`` reduced so the group keeps a multiple of ``round_to`` channels (or all)."""
    n = len(scores)
    keep = n - len(idxs)
    if round_to <= 1 or not idxs:
        return idxs
    target = min(n, math.ceil(keep / round_to) * round_to)
    if target == keep:
        return idxs
    ranked = sorted(idxs, key=lambda i: float(scores[i]))
    return sorted(ranked[: n - target])


def plan_at(
    scores: list[torch.Tensor], threshold: float, round_to: int, forced: Plan | None = None
) -> Plan:
    """Every channel scored <= ``threshold`` (one kept per group), rounded to ``round_to``,
    plus the ``forced`` removals (an uplink limit's; they keep a multiple of ``round_to``,
    so rounding the union up never gives one back)."""
    out = []
    for i, s in enumerate(scores):
        idxs = removable(s, threshold)
        if forced is not None and forced[i]:
            idxs = sorted(set(idxs) | set(forced[i]))
        out.append(round_plan(s, idxs, round_to))
    return out


def _keep_count(size: int, want: int, round_to: int) -> int:
    """Channels a group may keep: at most ``want``, a multiple of ``round_to``, at least one
    (or ``round_to``, or all when the group is narrower)."""
    floor = min(size, round_to) if round_to > 1 else 1
    keep = (want // round_to) * round_to if round_to > 1 else want
    return max(floor, min(size, keep))


def uplink_plan(
    scores: list[torch.Tensor], crossing: Crossing, limit: UplinkLimit, round_to: int
) -> Plan | None:
    """The fewest lowest-ranked crossing channels whose removal makes the uplink fit.

    Channels are taken lowest score first over every prunable crossing group;
    each group then keeps a multiple of ``round_to`` (at least one, or
    ``round_to``). None when even that cannot fit (a budget no width meets).
    """
    plan: Plan = [[] for _ in scores]
    prunable = [g for g in crossing.groups if not torch.isinf(scores[g]).any()]
    fixed = crossing.fixed + sum(len(scores[g]) for g in crossing.groups if g not in prunable)
    room = limit.channels() - fixed
    total = sum(len(scores[g]) for g in prunable)
    if total <= room:
        return plan
    order = sorted(
        ((float(scores[g][i]), g, i) for g in prunable for i in range(len(scores[g]))),
        key=lambda t: t[0],
    )
    removed: dict[int, list[int]] = {g: [] for g in prunable}
    for _, g, i in order:
        if total - sum(len(v) for v in removed.values()) <= room:
            break
        if len(scores[g]) - len(removed[g]) > 1:
            removed[g].append(i)
    for g in prunable:
        keep = _keep_count(len(scores[g]), len(scores[g]) - len(removed[g]), round_to)
        ranked = sorted(range(len(scores[g])), key=lambda i: float(scores[g][i]))
        plan[g] = sorted(ranked[: len(scores[g]) - keep])
    kept = sum(len(scores[g]) - len(plan[g]) for g in prunable)
    return plan if kept <= room else None


def narrowest_cost(
    model: BlockNet,
    split: int,
    mg: MaskGroups,
    spatial: dict[int, int] | None,
    round_to: int = 1,
    crossing: Crossing | None = None,
) -> tuple[Plan, Cost]:
    """The smallest legal edge: every prunable group keeps one channel (or ``round_to``)."""
    scores = mg.scores()
    plan = [
        round_plan(s, removable(torch.zeros_like(s), 0.0), round_to)
        if not torch.isinf(s).any()
        else []
        for s in scores
    ]
    return plan, estimate_cost(model, split, mg, plan, spatial, crossing)


def check_feasible(
    model: BlockNet,
    split: int,
    mg: MaskGroups,
    budget: EdgeBudget,
    spatial: dict[int, int] | None = None,
    round_to: int = 1,
    measure: Measure | None = None,
    crossing: Crossing | None = None,
) -> Cost:
    """Raise a :class:`BudgetError` naming the limit the narrowest legal edge cannot meet."""
    plan, low = narrowest_cost(model, split, mg, spatial, round_to, crossing)
    broken = low.violations(budget)
    if not broken and budget.latency is not None and measure is not None:
        ms = measure(plan)
        if ms > budget.latency.ms:
            broken.append(f"{ms:.3f} ms > {budget.latency.describe()}")
    if broken:
        what = "one channel" if round_to <= 1 else f"{round_to} channels"
        raise BudgetError(
            f"patrol.budget cannot be met at split {split}: the narrowest legal edge ({what} per "
            f"prunable group) has {'; '.join(broken)}"
        )
    return low


def plan_for_budget(
    model: BlockNet,
    split: int,
    mg: MaskGroups,
    budget: EdgeBudget,
    tau: float,
    spatial: dict[int, int] | None = None,
    round_to: int = 1,
    measure: Measure | None = None,
    per_cost: bool = False,
    crossing: Crossing | None = None,
) -> PlanResult:
    """Smallest removal (threshold >= tau on ranking scores) that meets every limit.

    ``per_cost``: rank by score per unit of budget (:func:`cost_shares`)
    instead of by score alone (``patrol.rank: mask_per_cost``).
    """
    scores = ranking_scores(mg)
    if per_cost:
        shares = cost_shares(model, split, mg, budget, spatial)
        scores = [s if torch.isinf(s).any() else s / w for s, w in zip(scores, shares, strict=True)]
    measured: dict[float, float] = {}

    def latency_ok(t: float, plan: Plan) -> bool:
        if budget.latency is None or measure is None:
            return True
        if t not in measured:
            measured[t] = measure(plan)
        return measured[t] <= budget.latency.ms

    def result(t: float, plan: Plan, cost: Cost) -> PlanResult:
        return PlanResult(plan, cost, measured.get(t))

    forced = None
    if budget.uplink is not None and crossing is not None:
        forced = uplink_plan(scores, crossing, budget.uplink, round_to)
        if forced is None:
            raise BudgetError(
                f"no width of the crossing channels at split {split} fits "
                f"{budget.uplink.describe()}"
            )
    # Exactly the masks <= tau (no tie-break), plus what the uplink limit forces.
    base = plan_at(mg.scores(), tau, round_to, forced)
    cost = estimate_cost(model, split, mg, base, spatial, crossing)
    if not cost.violations(budget) and latency_ok(tau, base):
        return result(tau, base, cost)
    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    cands = [float(c) for c in torch.unique(finite[finite > tau]).sort().values]

    def search(lo: int, fits: Callable[[float, Plan, Cost], bool]) -> int | None:
        hi, best = len(cands) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            plan = plan_at(scores, cands[mid], round_to, forced)
            if fits(cands[mid], plan, estimate_cost(model, split, mg, plan, spatial, crossing)):
                best, hi = mid, mid - 1
            else:
                lo = mid + 1
        return best

    static = search(0, lambda _t, _p, c: not c.violations(budget))
    if static is None:
        raise BudgetError(f"no removal of the edge at split {split} meets {budget}")
    chosen = static
    if budget.latency is not None and measure is not None:
        first = plan_at(scores, cands[static], round_to, forced)
        if not latency_ok(cands[static], first):
            found = search(static + 1, lambda t, p, _c: latency_ok(t, p))
            if found is None:
                raise BudgetError(
                    f"no removal of the edge at split {split} runs within "
                    f"{budget.latency.describe()}; fastest measured "
                    f"{min(measured.values()):.3f} ms"
                )
            chosen = found
    plan = plan_at(scores, cands[chosen], round_to, forced)
    return result(cands[chosen], plan, estimate_cost(model, split, mg, plan, spatial, crossing))


def resolve_budget(
    cfg: BudgetConfig,
    unpruned: BlockNet,
    input_shape: tuple[int, ...],
    split: int | None = None,
    value_bits: int = 32,
) -> EdgeBudget:
    """The recipe's limits as numbers; ``fit_split``'s are measured on the unpruned model.

    ``input_shape`` is one image (C, H, W). A ``fit: [latency]`` limit times the
    unpruned ``fit_split`` edge here, with the recipe's latency settings, so the
    pruned edge is compared with what it replaces on the same machine. An
    ``uplink_bits`` limit needs the ``split`` (its output's positions) and the
    bits each crossing value takes (``patrol.uplink.bits``, 32 for fp32).
    """
    fit = cfg.fit if cfg.fit_split is not None else []
    params = cfg.params
    if cfg.bytes is not None:
        params = cfg.bytes // BYTES_PER_PARAM
    macs = cfg.macs
    ms = cfg.latency_ms
    if cfg.fit_split is not None:
        ref = edge_modules(unpruned, cfg.fit_split)
        if "params" in fit:
            params = int(count_params(ref) * cfg.fraction("params"))
        if "macs" in fit:
            macs = int(count_macs(nn.Sequential(*ref), input_shape) * cfg.fraction("macs"))
    lat = cfg.latency
    limit = None
    if ms is not None or "latency" in fit:
        limit = LatencyLimit(ms or 0.0, lat.runtime, lat.threads, lat.batch, lat.seconds)
        if ms is None:
            assert cfg.fit_split is not None
            ms = measure_model_ms(unpruned, cfg.fit_split, input_shape, limit)
            ms *= cfg.fraction("latency")
            limit = LatencyLimit(ms, lat.runtime, lat.threads, lat.batch, lat.seconds)
    uplink = None
    if cfg.uplink_bits is not None:
        if split is None:
            raise BudgetError("an uplink_bits limit needs the split whose output crosses")
        _, h, w = edge_output_shape(unpruned, split, input_shape)
        uplink = UplinkLimit(cfg.uplink_bits, value_bits, h * w)
    return EdgeBudget(params, macs, limit, uplink)


def edge_output_shape(
    model: BlockNet, split: int, input_shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """C, H, W of what crosses the split for one image."""
    from patrol_compress.models.split import block_shapes, edge_stage_blocks

    return block_shapes(edge_stage_blocks(model, split), input_shape)[-1][1]
