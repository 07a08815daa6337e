"""What a residual block becomes once its branch is removed (block-wise pruning).

What remains of such a block is its shortcut followed by the block's ReLU; for
blocks without a downsample that is ``relu(x)``, which equals ``x`` after a
ReLU-ended block, so the block vanishes entirely. A pruned model's
``model.json`` lists the removed blocks, and loading it rebuilds them here
(:func:`patrol_compress.models.saved.load_run_model`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from patrol_compress.errors import ModelError


class ShortcutOnly(nn.Module):
    """What a residual block computes once its branch is removed."""

    def __init__(self, downsample: nn.Module | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x if self.downsample is None else self.downsample(x))


def remove_residual_branches(model: nn.Module, names: Sequence[str]) -> None:
    """Replace each named residual block by its :class:`ShortcutOnly`."""
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
