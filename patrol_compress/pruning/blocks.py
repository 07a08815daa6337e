"""Block-wise removal: a residual branch whose scalar mask is <= tau is dropped.

The block is then replaced by its shortcut
(:func:`patrol_compress.models.residual.remove_residual_branches`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from patrol_compress.pruning.masks import MaskedNorm


def dead_blocks(model: nn.Module, blocks: Sequence[str], tau: float) -> list[str]:
    """Blocks whose branch mask is <= tau."""
    out = []
    for name in blocks:
        block = model.get_submodule(name)
        masked = [m for m in block.children() if isinstance(m, MaskedNorm)]
        if masked and float(masked[-1].mask.weight.detach().abs().max()) <= tau:
            out.append(name)
    return out
