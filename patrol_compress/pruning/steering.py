"""FISTA on the masks with budget steering, and the rule that sets the masks' rate.

Budget steering: at the start of every epoch the masks' current ranking decides
which channels the budget would remove; those masks are capped by a bound that
falls linearly to exactly zero at ``steer_until`` of the stage (default 60%),
while FISTA keeps shrinking the rest; the remaining epochs train the network
with those channels already silent, so it adapts before anything is removed.
The plan is re-ranked each epoch, so a channel whose mask recovers can leave
the set (a late re-ranking only swaps channels already near zero). At the end
the planned masks are exactly zero, so removal changes nothing the network
computed (FISTA momentum restarts each epoch, a standard "restart" variant, so
the sparse iterate can be read).

The mask rate: each FISTA step shrinks a mask by about ``mask_lr x (lambda1 +
lambda2 x mask)``, so the total pull over a run grows with its number of steps.
The recipes choose ``mask_lr`` so that this total is near 0.6 of the masks'
start (:data:`TARGET_SHRINKAGE`): the budget steering, not the L1 term, then
decides what goes. :func:`mask_lr_for` is that rule; :func:`schedule_warning`
names a schedule whose pull alone would empty the blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from patrol_compress.pruning.budget import EdgeBudget
from patrol_compress.pruning.fista import FISTA
from patrol_compress.pruning.structure import BlockStructure, ChannelStructure

TARGET_SHRINKAGE = 0.6
"""Total pull on a mask over a run, as a fraction of its start, that the recipes choose."""

COLLAPSE_SHRINKAGE = 2.0
"""A pull this many times the masks' start empties whole blocks unless the task holds them.

Measured: the quickstart's 1e-3 on 6,000 Fashion-MNIST images (a pull of 2.1 over
188 steps) shrank every mask to zero and the run collapsed to chance; the
quickstart itself pulls 1.4 and keeps its accuracy (recipes/fashion_mnist_small.yaml)."""


def mask_shrinkage(
    mask_lr: float, lambda1: float, lambda2: float, mask_init: float, steps: int
) -> float:
    """Total pull on a mask starting at ``mask_init`` over ``steps`` FISTA steps (the rule)."""
    return mask_lr * (lambda1 + lambda2 * mask_init) * steps


def mask_lr_for(steps: int, lambda1: float, lambda2: float, mask_init: float) -> float:
    """The mask rate whose total pull over ``steps`` is :data:`TARGET_SHRINKAGE` x ``mask_init``.

    Without a pull (both lambdas 0) the rate only scales FISTA's gradient step;
    the recipes' default 1e-2 is kept then.
    """
    per_step = lambda1 + lambda2 * mask_init
    if per_step <= 0 or steps < 1:
        return 1e-2
    return TARGET_SHRINKAGE * mask_init / (per_step * steps)


def schedule_warning(
    mask_lr: float,
    lambda1: float,
    lambda2: float,
    mask_init: float,
    steps: int,
    field: str = "mask_lr",
) -> str | None:
    """One line when the schedule's pull alone would empty most of every block, else None."""
    pull = mask_shrinkage(mask_lr, lambda1, lambda2, mask_init, steps)
    if pull < COLLAPSE_SHRINKAGE * mask_init:
        return None
    suggested = mask_lr_for(steps, lambda1, lambda2, mask_init)
    return (
        f"{field} {mask_lr:g} pulls each mask down by about {pull:.2g} over {steps} steps "
        f"(masks start at {mask_init:g}): most channels of every block would go unless the "
        f"task holds them; the recipes keep the pull near {TARGET_SHRINKAGE} "
        f"({field} {suggested:.2g} here)"
    )


class MaskSteering:
    """FISTA on the masks plus the budget steering described in the module docstring."""

    def __init__(
        self,
        masks: list[nn.Parameter],
        structure: ChannelStructure | BlockStructure | None,
        budget: EdgeBudget | None,
        total_steps: int,
        mask_lr: float,
        lambda1: float,
        lambda2: float,
        tau: float,
        steer_until: float,
    ) -> None:
        self.structure, self.budget, self.total = structure, budget, total_steps
        self.tau, self.steer_until = tau, steer_until
        self.fista = FISTA(masks, mask_lr, lambda1, lambda2) if masks else None
        self.marks: dict[nn.Parameter, torch.Tensor] = {}
        self.start: dict[int, torch.Tensor] = {}
        self.epoch_start = 0

    def begin_epoch(self, first_step: int) -> None:
        if self.fista is None:
            return
        self.fista.finalize()
        self.epoch_start = first_step
        if self.budget is not None and self.structure is not None:
            self.marks = self.structure.budget_caps(self.budget, self.tau)
            self.start = {id(p): p.detach().abs().clone() for p in self.marks}

    def before_step(self, step: int) -> None:
        if self.fista is None or not self.marks:
            return
        end = max(round(self.steer_until * self.total), 1)
        left = max(end - self.epoch_start, 1)
        frac = max(0.0, 1.0 - (step + 1 - self.epoch_start) / left)
        self.fista.set_caps(
            {
                p: torch.where(torch.isinf(m), m, self.start[id(p)] * frac)
                for p, m in self.marks.items()
            }
        )

    def finish(self, ran_epochs: bool) -> None:
        if self.fista is None:
            return
        self.fista.set_caps({})
        self.fista.finalize()
        if self.budget is not None and ran_epochs and self.structure is not None:
            # The caps reached zero at the last step; make that exact for the removal.
            with torch.no_grad():
                for p, m in self.structure.budget_caps(self.budget, self.tau).items():
                    p[m == 0] = 0.0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The steering's own state (the plan of this epoch and where it started), as tensors.

        FISTA's iterate, momentum and caps are in :attr:`fista`'s state; the plan
        is stored per mask by its position in FISTA's parameter list.
        """
        out: dict[str, torch.Tensor] = {"epoch_start": torch.tensor([self.epoch_start])}
        if self.fista is None:
            return out
        index = {id(p): i for i, p in enumerate(self.fista.param_groups[0]["params"])}
        for p, m in self.marks.items():
            out[f"marks.{index[id(p)]}"] = m.detach().cpu()
            out[f"start.{index[id(p)]}"] = self.start[id(p)].detach().cpu()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.epoch_start = int(state["epoch_start"][0])
        self.marks, self.start = {}, {}
        if self.fista is None:
            return
        params = self.fista.param_groups[0]["params"]
        for key, value in state.items():
            kind, _, i = key.partition(".")
            if kind == "marks":
                p = params[int(i)]
                self.marks[p] = value.to(p.device)
                self.start[id(p)] = state[f"start.{i}"].to(p.device)
