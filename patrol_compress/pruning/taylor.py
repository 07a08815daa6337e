"""Gate-Taylor importance of every prunable channel, for the budget's ranking.

Why: at the moment the budget plans (the start of the PATROL stage) every mask
still holds its initial value, so a ranking by mask is decided by the
weight-magnitude tie-break, and a ranking by mask per unit of budget
(``patrol.rank: mask_per_cost``) degenerates into "remove the dearest channel
first". On the 224 px half-width ResNet-18 that stripped every residual stream
(the channels shared by all blocks of a stage, hence the dearest) to 8
channels and rank-1 fell from 98.6% to 41.4%.

What: the first-order Taylor estimate of the loss change when a channel is
removed, with the masks as the gates of Molchanov et al. (2019, "Importance
Estimation for Neural Network Pruning"): removing root channel ``c`` of a group
sets every mask of that group at ``c`` to zero, so the loss changes by about
``sum_masks m_c * dL/dm_c``. Its square, averaged over the steps of an epoch,
is the channel's importance. A residual channel, gated in every block of its
stage, collects the gradient of all of them, so its importance grows with its
footprint, as its cost does: importance per unit of budget (``taylor_per_cost``)
is then the greedy knapsack rule of HALP (Shen et al., 2022) on our limits.

When: the meter observes the gradients of the training steps (after the
backward, before FISTA moves the masks). The budget plans from the previous
epoch's importance; a stage's first epoch, with nothing observed yet, is not
steered (see :class:`~patrol_compress.pruning.patrol.MaskSteering`).
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from patrol_compress.pruning.masks import ChannelMask
from patrol_compress.pruning.remove import MaskGroups

PREFIX = "taylor."


def _gated(group: tp.dependency.Group) -> list[tuple[ChannelMask, list[int], torch.Tensor]]:
    """(mask, its indices, their root channels) for every mask of ``group``."""
    out = []
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, ChannelMask):
            out.append((layer, list(item.idxs), torch.as_tensor(item.root_idxs)))
    return out


class TaylorMeter:
    """Running mean over steps of ``(sum_masks m * dL/dm)^2`` per root channel of each group."""

    def __init__(self, mg: MaskGroups) -> None:
        self.sizes = [len(g[0].idxs) for g in mg.groups]
        self.bind(mg)
        self.reset()

    def bind(self, mg: MaskGroups) -> None:
        """Follow a rebuilt dependency graph of the same model (the groups must match)."""
        sizes = [len(g[0].idxs) for g in mg.groups]
        if sizes != self.sizes:
            raise ValueError(f"the channel groups changed ({self.sizes} -> {sizes})")
        self.gates = [_gated(g) for g in mg.groups]

    def reset(self) -> None:
        self.total = [torch.zeros(n, dtype=torch.float64) for n in self.sizes]
        self.steps = 0

    @torch.no_grad()
    def observe(self) -> None:
        """Add this step's estimate; call after ``backward`` and before the masks move."""
        for total, gates in zip(self.total, self.gates, strict=True):
            delta = torch.zeros_like(total)
            for mask, idxs, roots in gates:
                grad = mask.weight.grad
                if grad is None:
                    continue
                change = (mask.weight.detach() * grad)[idxs].double().cpu()
                delta.index_add_(0, roots, change)
            total += delta.pow(2)
        self.steps += 1

    def scores(self) -> list[torch.Tensor]:
        """Mean importance per root channel (float32); zeros before any step."""
        n = max(self.steps, 1)
        return [(t / n).float() for t in self.total]

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint, so a resumed stage plans from the same importance."""
        out = {f"{PREFIX}{i}": t.clone() for i, t in enumerate(self.total)}
        out[f"{PREFIX}steps"] = torch.tensor(self.steps)
        return out

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        if f"{PREFIX}steps" not in state:
            return  # a checkpoint written without the meter: start afresh
        self.total = [state[f"{PREFIX}{i}"].double().clone() for i in range(len(self.sizes))]
        self.steps = int(state[f"{PREFIX}steps"])
