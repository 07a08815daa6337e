"""The edge at split K: which blocks, children and modules run on the device, and their shapes.

This is the one place that answers "what is the edge at split K" for a
:class:`~patrol_compress.models.blocknet.BlockNet`: the stem and the first K
stages (:func:`edge_blocks`); the cloud holds the rest including the head.
Masks, the Lipschitz term, budgets, defenses, attacks and the exporters all ask
here.

:func:`split` returns both partitions. They share the original's modules, so
``cloud(edge(x)) == model(x)`` bit for bit, and neither changes any module's
train/eval mode (a fresh container would be in training mode and the exporter
then flips shared BNs; see ``docs/measurements.md``, "Splitting and export").
For export, deep-copy the partitions first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet

Shape = tuple[int, int, int]


def check_split(model: BlockNet, split: int) -> None:
    """``split`` must name one of the model's stages (1..number of stages)."""
    n = len(model.stage_names)
    if not 1 <= split <= n:
        raise ModelError(f"split {split} is out of range: this model has stages 1..{n}")


def edge_blocks(model: BlockNet, split: int) -> list[str]:
    """Names of the blocks on the edge for ``split`` (stem + first ``split`` stages)."""
    check_split(model, split)
    first = model.block_spec[0][0]
    stem = [] if first in model.stage_names else [first]
    return [*stem, *model.stage_names[:split]]


def edge_child_names(model: BlockNet, split: int) -> list[str]:
    """Names of the top-level children that run on the edge at ``split``, in order."""
    spec = dict(model.block_spec)
    return [c for b in edge_blocks(model, split) for c in spec[b]]


def edge_modules(model: BlockNet, split: int) -> list[nn.Module]:
    """The top-level children that run on the edge at ``split``, in order."""
    return [getattr(model, c) for c in edge_child_names(model, split)]


def last_edge_child(model: BlockNet, split: int) -> str:
    """Name of the child whose output crosses the network at ``split``."""
    return edge_child_names(model, split)[-1]


def split(model: BlockNet, k: int) -> tuple[BlockNet, BlockNet]:
    """The edge and cloud partitions at split ``k`` (sharing ``model``'s modules)."""
    edge_names = edge_blocks(model, k)
    cloud_names = [b for b in model.block_names if b not in edge_names]
    return model.sub_net(edge_names), model.sub_net(cloud_names)


class StageBlock(nn.Module):
    """Block i of Eq. 4: stage i, with the stem in front of stage 1 (shares modules)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.parts:
            x = m(x)
        return x


def edge_stage_blocks(model: BlockNet, split: int) -> list[StageBlock]:
    """The edge at ``split`` as one :class:`StageBlock` per stage (the stem joins stage 1)."""
    names = edge_blocks(model, split)
    has_stem = names[0] not in model.stage_names
    out: list[StageBlock] = []
    pending: list[nn.Module] = []
    for b in names:
        pending += model.block_modules(b)
        if b in model.stage_names:
            out.append(StageBlock(pending))
            pending = []
    assert not pending or not has_stem
    return out


@torch.no_grad()
def block_shapes(
    blocks: Sequence[nn.Module], input_shape: Sequence[int]
) -> list[tuple[Shape, Shape]]:
    """(input C,H,W; output C,H,W) of each block for one image of ``input_shape``.

    Every submodule's train/eval flag is restored individually afterwards: the
    blocks are often fresh wrappers (training by default) around shared layers,
    and restoring the wrapper's flag would flip the shared BatchNorms.
    """
    was = [(m, m.training) for b in blocks for m in b.modules()]
    for b in blocks:
        b.eval()
    dev = next(iter(blocks[0].parameters())).device
    h = torch.zeros(1, *input_shape, device=dev)
    out = []
    for b in blocks:
        before = tuple(h.shape[1:])
        h = b(h)
        out.append((before, tuple(h.shape[1:])))
    for m, flag in was:
        m.training = flag
    return out  # type: ignore[return-value]


def edge_shapes(
    model: BlockNet, split: int, input_shape: Sequence[int]
) -> list[tuple[Shape, Shape]]:
    """(input, output) C,H,W of each edge stage block at ``split``: what an inverter mirrors."""
    return block_shapes(edge_stage_blocks(model, split), input_shape)
