"""The two pruning granularities behind one interface (Table III).

:class:`ChannelStructure` masks every edge BN channel and removes coupled
channels through torch-pruning; :class:`BlockStructure` masks each residual
branch with one scalar and removes whole branches. Both answer the same
questions the PATROL stage asks: how big would the edge be after a plan, which
plan fits the budget, and how to remove a plan for real.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from patrol_compress.errors import BudgetError
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.residual import remove_residual_branches
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning import blocks as blockops
from patrol_compress.pruning.budget import (
    Cost,
    Crossing,
    EdgeBudget,
    Measure,
    Plan,
    PlanResult,
    check_feasible,
    edge_output_shape,
    estimate_cost,
    layer_cost,
    layer_spatial,
    plan_at,
    plan_for_budget,
)
from patrol_compress.pruning.latency import EdgeTimer, LatencyLimit, measure_model_ms
from patrol_compress.pruning.masks import (
    ChannelMask,
    MaskedNorm,
    fold_masks,
    hard_zero,
    insert_block_masks,
    insert_channel_masks,
)
from patrol_compress.pruning.remove import (
    MaskGroups,
    apply_plan,
    build_mask_groups,
    check_equivalence,
    restore_frozen,
    zero_planned,
)


@dataclass
class Removal:
    """What a removal did, for metrics.json."""

    plan_kind: str  # "threshold" or "budget" (lowest masks removed to fit)
    removed: int
    removed_blocks: list[str] = field(default_factory=list)
    equivalence_rel_diff: float = 0.0
    edge_params: int = 0
    edge_macs: int = 0
    latency_ms: float | None = None  # measured for a latency budget, with its settings
    latency: dict[str, Any] | None = None
    round_to: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan_kind,
            "removed": self.removed,
            "removed_blocks": self.removed_blocks,
            "equivalence_rel_diff": self.equivalence_rel_diff,
            "edge_params": self.edge_params,
            "edge_macs": self.edge_macs,
            "latency_ms": self.latency_ms,
            "latency": self.latency,
            "round_to": self.round_to,
        }


def find_crossing(model: BlockNet, split: int, mg: MaskGroups, example: torch.Tensor) -> Crossing:
    """The mask groups whose channels cross the split: those a cloud layer reads (the next
    stage's convolutions, the head) or the uplink quantizer holds; the rest of the edge
    output's channels are owned by no prunable group (``fixed``)."""
    from patrol_compress.models.split import split as split_model
    from patrol_compress.uplink.quant import UplinkQuant

    cloud = {id(m) for m in split_model(model, split)[1].modules()}
    groups = tuple(
        i
        for i, g in enumerate(mg.groups)
        if any(
            id(item.dep.target.module) in cloud or isinstance(item.dep.target.module, UplinkQuant)
            for item in g
        )
    )
    channels = edge_output_shape(model, split, tuple(example.shape[1:]))[0]
    owned = sum(len(mg.groups[i][0].idxs) for i in groups)
    return Crossing(groups, max(0, channels - owned))


def _edge_cost(model: BlockNet, split: int, example: torch.Tensor) -> tuple[int, int]:
    edge = edge_modules(model, split)
    return count_params(edge), count_macs(nn.Sequential(*edge), tuple(example.shape[1:]))


def _latency_record(budget: EdgeBudget | None) -> dict[str, Any] | None:
    lat = budget.latency if budget is not None else None
    if lat is None:
        return None
    return {"limit_ms": lat.ms, "runtime": lat.runtime, "threads": lat.threads, "batch": lat.batch}


class ChannelStructure:
    """Channel masks on every edge BN; removal through torch-pruning's dependency graph."""

    def __init__(
        self,
        model: BlockNet,
        split: int,
        init: float,
        example: torch.Tensor,
        round_to: int = 1,
        per_cost: bool = False,
        timer: EdgeTimer = measure_model_ms,
    ) -> None:
        self.model, self.split, self.round_to = model, split, round_to
        self.per_cost = per_cost
        self.timer = timer
        self.example = example
        insert_channel_masks(model, split, init)
        self.mg = build_mask_groups(model, example)
        self.crossing = find_crossing(model, split, self.mg, example)
        self.spatial = layer_spatial(edge_modules(model, split), example)

    def _measure(self, budget: EdgeBudget) -> Measure | None:
        """Times the edge a plan would leave (a pruned copy) at the budget's latency settings."""
        limit = budget.latency
        if limit is None:
            return None
        shape = tuple(self.example.shape[1:])

        def build(plan: Plan) -> BlockNet:
            twin = copy.deepcopy(self.model).cpu().eval()
            mg = build_mask_groups(twin, self.example.cpu())
            if [len(g[0].idxs) for g in mg.groups] != [len(g[0].idxs) for g in self.mg.groups]:
                raise BudgetError("the copied model's channel groups differ; cannot time a plan")
            apply_plan(mg, plan)
            fold_masks(twin)
            return twin

        return lambda plan: self.timer(build(plan), self.split, shape, limit)

    def check(self, budget: EdgeBudget) -> Cost:
        return check_feasible(
            self.model,
            self.split,
            self.mg,
            budget,
            self.spatial,
            self.round_to,
            self._measure(budget),
            self.crossing,
        )

    def projected_params(self, tau: float) -> int:
        plan = plan_at(self.mg.scores(), tau, self.round_to)
        return estimate_cost(self.model, self.split, self.mg, plan).params

    def plan(self, budget: EdgeBudget, tau: float) -> PlanResult:
        return plan_for_budget(
            self.model,
            self.split,
            self.mg,
            budget,
            tau,
            self.spatial,
            self.round_to,
            self._measure(budget),
            self.per_cost,
            self.crossing,
        )

    def budget_caps(self, budget: EdgeBudget, tau: float) -> dict[nn.Parameter, torch.Tensor]:
        """Per-mask 0/inf caps: 0 marks the elements the budget plan would remove."""
        plan = self.plan(budget, tau).plan
        marks: dict[nn.Parameter, torch.Tensor] = {}
        for group, idxs in zip(self.mg.groups, plan, strict=True):
            chosen = set(idxs)
            for item in group:
                layer = item.dep.target.module
                if isinstance(layer, ChannelMask):
                    t = marks.setdefault(layer.weight, torch.full_like(layer.weight, float("inf")))
                    for j, r in enumerate(item.root_idxs):
                        if r in chosen:
                            t[item.idxs[j]] = 0.0
        return marks

    @torch.no_grad()
    def remove(self, budget: EdgeBudget | None, tau: float, example: torch.Tensor) -> Removal:
        hard_zero(self.model, tau)
        self.mg = build_mask_groups(self.model, example)
        self.crossing = find_crossing(self.model, self.split, self.mg, example)
        kind, latency = "threshold", None
        if budget is not None:
            # plan_for_budget returns the threshold plan itself when it already fits.
            result = self.plan(budget, tau)
            plan, latency = result.plan, result.latency_ms
            if plan != plan_at(self.mg.scores(), tau, self.round_to):
                kind = "budget"
        else:
            plan = plan_at(self.mg.scores(), tau, self.round_to)
        zero_planned(self.mg, plan)
        reference = copy.deepcopy(self.model).eval()
        removed = apply_plan(self.mg, plan)
        fold_masks(self.model)
        restore_frozen(self.model)
        diff = check_equivalence(reference, self.model, example)
        params, macs = _edge_cost(self.model, self.split, example)
        if budget is not None and budget.latency is not None and latency is None:
            latency = self.timer(self.model, self.split, tuple(example.shape[1:]), budget.latency)
        return Removal(
            kind, removed, [], diff, params, macs, latency, _latency_record(budget), self.round_to
        )


class BlockStructure:
    """One scalar mask per residual branch; removal drops whole branches (Table III)."""

    def __init__(
        self,
        model: BlockNet,
        split: int,
        init: float,
        example: torch.Tensor,
        round_to: int = 1,
        timer: EdgeTimer = measure_model_ms,
    ) -> None:
        self.model, self.split = model, split
        self.example = example
        self.timer = timer
        self.blocks = insert_block_masks(model, split, init)
        self.spatial = layer_spatial(edge_modules(model, split), example)

    def _mask(self, name: str, model: BlockNet | None = None) -> ChannelMask:
        """The scalar mask of residual branch ``name`` (in ``model``, default this one's)."""
        block = (model or self.model).get_submodule(name)
        return [m for m in block.children() if isinstance(m, MaskedNorm)][-1].mask

    def _branch_modules(self, name: str) -> list[nn.Module]:
        block = self.model.get_submodule(name)
        ds = getattr(block, "downsample", None)
        skip = set(ds.modules()) if ds is not None else set()
        return [m for m in block.modules() if m not in skip]

    def _cost_without(self, dead: list[str]) -> Cost:
        gone = {id(m) for b in dead for m in self._branch_modules(b)}
        params = macs = 0
        for top in edge_modules(self.model, self.split):
            for m in top.modules():
                if id(m) in gone:
                    continue
                p, mac = layer_cost(m, set(), set())
                params, macs = params + p, macs + mac * self.spatial.get(id(m), 0)
        # Removing branches never narrows the stream: every crossing channel stays.
        crossing = edge_output_shape(self.model, self.split, tuple(self.example.shape[1:]))[0]
        return Cost(params, macs, crossing)

    def _latency_without(self, dead: list[str], limit: LatencyLimit) -> float:
        @torch.no_grad()
        def build() -> BlockNet:
            twin = copy.deepcopy(self.model).cpu().eval()
            for b in dead:
                self._mask(b, twin).weight.zero_()
            fold_masks(twin)
            remove_residual_branches(twin, dead)
            return twin

        return self.timer(build(), self.split, tuple(self.example.shape[1:]), limit)

    def _fits(self, dead: list[str], budget: EdgeBudget) -> bool:
        if self._cost_without(dead).violations(budget):
            return False
        lat = budget.latency
        return lat is None or self._latency_without(dead, lat) <= lat.ms

    def check(self, budget: EdgeBudget) -> Cost:
        low = self._cost_without(self.blocks)
        if not self._fits(self.blocks, budget):
            broken = low.violations(budget) or [
                f"latency above {budget.latency.describe() if budget.latency else ''}"
            ]
            raise BudgetError(
                f"patrol.budget cannot be met block-wise at split {self.split}; with every "
                f"residual branch removed the edge still has {'; '.join(broken)}"
            )
        return low

    def projected_params(self, tau: float) -> int:
        return self._cost_without(blockops.dead_blocks(self.model, self.blocks, tau)).params

    def _budget_plan(self, budget: EdgeBudget, tau: float) -> list[str]:
        dead = blockops.dead_blocks(self.model, self.blocks, tau)
        alive = sorted(
            (b for b in self.blocks if b not in dead),
            key=lambda b: float(self._mask(b).weight.detach().abs().max()),
        )
        while alive and not self._fits(dead, budget):
            dead.append(alive.pop(0))
        return dead

    def budget_caps(self, budget: EdgeBudget, tau: float) -> dict[nn.Parameter, torch.Tensor]:
        return {self._mask(b).weight: torch.zeros(1) for b in self._budget_plan(budget, tau)}

    @torch.no_grad()
    def remove(self, budget: EdgeBudget | None, tau: float, example: torch.Tensor) -> Removal:
        hard_zero(self.model, tau)
        dead = blockops.dead_blocks(self.model, self.blocks, tau)
        kind = "threshold"
        if budget is not None and not self._fits(dead, budget):
            dead, kind = self._budget_plan(budget, tau), "budget"
        for b in dead:
            self._mask(b).weight.zero_()
        reference = copy.deepcopy(self.model).eval()
        fold_masks(self.model)
        remove_residual_branches(self.model, dead)
        diff = check_equivalence(reference, self.model, example)
        params, macs = _edge_cost(self.model, self.split, example)
        latency = None
        if budget is not None and budget.latency is not None:
            latency = self.timer(self.model, self.split, tuple(example.shape[1:]), budget.latency)
        return Removal(kind, len(dead), dead, diff, params, macs, latency, _latency_record(budget))


def make_structure(
    granularity: str,
    model: BlockNet,
    split: int,
    init: float,
    example: torch.Tensor,
    round_to: int = 1,
    rank: str = "mask",
    timer: EdgeTimer = measure_model_ms,
) -> ChannelStructure | BlockStructure:
    """The structure for ``granularity``; ``round_to`` and ``rank`` apply to channel groups only.

    ``timer`` times candidate edges for a latency limit (the real export + bench by default).
    """
    if granularity == "block":
        return BlockStructure(model, split, init, example, timer=timer)
    return ChannelStructure(
        model, split, init, example, round_to, rank == "mask_per_cost", timer=timer
    )
