"""Block-wise removal: a residual branch whose scalar mask is <= tau is dropped.

What remains of such a block is its shortcut followed by the block's ReLU; for
blocks without a downsample that is ``relu(x)``, which equals ``x`` after a
ReLU-ended block, so the block vanishes entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.pruning.masks import MaskedNorm


class ShortcutOnly(nn.Module):
    """What a residual block computes once its branch is removed."""

    def __init__(self, downsample: nn.Module | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x if self.downsample is None else self.downsample(x))


def remove_residual_branches(model: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise ModelError(
                f"cannot remove block '{name}': the model has no such module"
            ) from None
        parent, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model,
            child,
            ShortcutOnly(getattr(block, "downsample", None)),
        )


def dead_blocks(model: nn.Module, blocks: Sequence[str], tau: float) -> list[str]:
    """Blocks whose branch mask is <= tau."""
    out = []
    for name in blocks:
        block = model.get_submodule(name)
        masked = [m for m in block.children() if isinstance(m, MaskedNorm)]
        if masked and float(masked[-1].mask.weight.detach().abs().max()) <= tau:
            out.append(name)
    return out
