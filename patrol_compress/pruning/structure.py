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
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.residual import remove_residual_branches
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning import blocks as blockops
from patrol_compress.pruning.budget import check_feasible, estimate_params, plan_for_budget
from patrol_compress.pruning.masks import (
    ChannelMask,
    MaskedNorm,
    fold_masks,
    hard_zero,
    insert_block_masks,
    insert_channel_masks,
)
from patrol_compress.pruning.remove import (
    apply_plan,
    build_mask_groups,
    check_equivalence,
    plan_by_threshold,
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan_kind,
            "removed": self.removed,
            "removed_blocks": self.removed_blocks,
            "equivalence_rel_diff": self.equivalence_rel_diff,
            "edge_params": self.edge_params,
        }


class ChannelStructure:
    def __init__(self, model: BlockNet, split: int, init: float, example: torch.Tensor) -> None:
        self.model, self.split = model, split
        insert_channel_masks(model, split, init)
        self.mg = build_mask_groups(model, example)

    def check(self, budget: int) -> int:
        return check_feasible(self.model, self.split, self.mg, budget)

    def projected_params(self, tau: float) -> int:
        return estimate_params(self.model, self.split, self.mg, plan_by_threshold(self.mg, tau))

    def budget_caps(self, budget: int, tau: float) -> dict[nn.Parameter, torch.Tensor]:
        """Per-mask 0/inf caps: 0 marks the elements the budget plan would remove."""
        plan, _ = plan_for_budget(self.model, self.split, self.mg, budget, tau)
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
    def remove(self, budget: int | None, tau: float, example: torch.Tensor) -> Removal:
        hard_zero(self.model, tau)
        self.mg = build_mask_groups(self.model, example)
        plan = plan_by_threshold(self.mg, tau)
        kind = "threshold"
        if budget is not None and estimate_params(self.model, self.split, self.mg, plan) > budget:
            plan, _ = plan_for_budget(self.model, self.split, self.mg, budget, tau)
            kind = "budget"
        zero_planned(self.mg, plan)
        reference = copy.deepcopy(self.model).eval()
        removed = apply_plan(self.mg, plan)
        fold_masks(self.model)
        restore_frozen(self.model)
        diff = check_equivalence(reference, self.model, example)
        return Removal(kind, removed, [], diff, count_params(edge_modules(self.model, self.split)))


class BlockStructure:
    def __init__(self, model: BlockNet, split: int, init: float, example: torch.Tensor) -> None:
        self.model, self.split = model, split
        self.blocks = insert_block_masks(model, split, init)

    def _mask(self, name: str) -> ChannelMask:
        block = self.model.get_submodule(name)
        return [m for m in block.children() if isinstance(m, MaskedNorm)][-1].mask

    def _branch_params(self, name: str) -> int:
        block = self.model.get_submodule(name)
        total = count_params([block])
        ds = getattr(block, "downsample", None)
        return total - (count_params([ds]) if ds is not None else 0)

    def _params_without(self, dead: list[str]) -> int:
        total = count_params(edge_modules(self.model, self.split))
        return total - sum(self._branch_params(b) for b in dead)

    def check(self, budget: int) -> int:
        low = self._params_without(self.blocks)
        if low > budget:
            raise BudgetError(
                f"patrol.budget: {budget} parameters cannot be met block-wise at split "
                f"{self.split}; with every residual branch removed the edge still has {low}"
            )
        return low

    def projected_params(self, tau: float) -> int:
        return self._params_without(blockops.dead_blocks(self.model, self.blocks, tau))

    def _budget_plan(self, budget: int, tau: float) -> list[str]:
        dead = blockops.dead_blocks(self.model, self.blocks, tau)
        alive = sorted(
            (b for b in self.blocks if b not in dead),
            key=lambda b: float(self._mask(b).weight.detach().abs().max()),
        )
        while self._params_without(dead) > budget and alive:
            dead.append(alive.pop(0))
        return dead

    def budget_caps(self, budget: int, tau: float) -> dict[nn.Parameter, torch.Tensor]:
        return {self._mask(b).weight: torch.zeros(1) for b in self._budget_plan(budget, tau)}

    @torch.no_grad()
    def remove(self, budget: int | None, tau: float, example: torch.Tensor) -> Removal:
        hard_zero(self.model, tau)
        dead = blockops.dead_blocks(self.model, self.blocks, tau)
        kind = "threshold"
        if budget is not None and self._params_without(dead) > budget:
            dead, kind = self._budget_plan(budget, tau), "budget"
        for b in dead:
            self._mask(b).weight.zero_()
        reference = copy.deepcopy(self.model).eval()
        fold_masks(self.model)
        remove_residual_branches(self.model, dead)
        diff = check_equivalence(reference, self.model, example)
        return Removal(
            kind, len(dead), dead, diff, count_params(edge_modules(self.model, self.split))
        )


def make_structure(
    granularity: str, model: BlockNet, split: int, init: float, example: torch.Tensor
) -> ChannelStructure | BlockStructure:
    if granularity == "block":
        return BlockStructure(model, split, init, example)
    return ChannelStructure(model, split, init, example)
