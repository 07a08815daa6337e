"""The one view of a network the rest of the toolkit has: an ordered list of named blocks.

A :class:`BlockNet` runs its children in order, like ``nn.Sequential``, and groups
consecutive children into named *blocks*: a stem, one or more stages, and an
optional head. Masks, splits, the Lipschitz term and the exporters only ever ask
for "the stem and the first K stages" (:mod:`patrol_compress.models.split`), so
they never hard-code ResNet; any CNN whose forward is a chain of top-level
children plugs in (see :func:`patrol_compress.models.factory.build_model`).

Children keep their own attribute names, so a ResNet built here has the same
state-dict keys as torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from patrol_compress.errors import ModelError


class BlockNet(nn.Module):
    """Children executed in order and grouped into named blocks.

    Args:
        layers: children in execution order.
        blocks: ``(block name, child names)`` in order. The first block is the
            stem; the blocks named in ``stages`` follow it; a final block named
            ``head`` (optional) maps features to the task output.
        stages: names of the blocks a split may fall after.
    """

    def __init__(
        self,
        layers: OrderedDict[str, nn.Module],
        blocks: Sequence[tuple[str, Sequence[str]]],
        stages: Sequence[str],
    ) -> None:
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.block_spec: list[tuple[str, tuple[str, ...]]] = [
            (b, tuple(children)) for b, children in blocks
        ]
        self.stage_names: tuple[str, ...] = tuple(stages)
        _check_spec(list(layers), self.block_spec, self.stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x
        for module in self.children():
            out = module(out)
        return out

    @property
    def block_names(self) -> list[str]:
        return [b for b, _ in self.block_spec]

    @property
    def has_head(self) -> bool:
        return bool(self.block_spec) and self.block_spec[-1][0] == "head"

    def block_modules(self, block: str) -> list[nn.Module]:
        """The children that make up ``block``, in order."""
        for name, children in self.block_spec:
            if name == block:
                return [getattr(self, c) for c in children]
        raise ModelError(f"no block named '{block}'; blocks are {self.block_names}")

    def run_block(self, block: str, x: torch.Tensor) -> torch.Tensor:
        for m in self.block_modules(block):
            x = m(x)
        return x

    def sub_net(self, block_names: Iterable[str]) -> BlockNet:
        """A BlockNet sharing this net's modules, restricted to ``block_names``.

        The container takes this net's ``training`` flag without touching the
        children: calling ``.train()`` on it would flip shared BatchNorms.
        """
        wanted = list(block_names)
        spec = [(b, c) for b, c in self.block_spec if b in wanted]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for _, children in spec:
            for c in children:
                layers[c] = getattr(self, c)
        sub = BlockNet(layers, spec, [s for s in self.stage_names if s in wanted])
        sub.training = self.training
        return sub


def _check_spec(
    layer_names: list[str], spec: list[tuple[str, tuple[str, ...]]], stages: tuple[str, ...]
) -> None:
    flat = [c for _, children in spec for c in children]
    if flat != layer_names:
        raise ModelError(
            f"blocks must cover the children in order exactly once: children {layer_names}, "
            f"blocks cover {flat}"
        )
    names = [b for b, _ in spec]
    if len(set(names)) != len(names):
        raise ModelError(f"duplicate block names in {names}")
    # A full net is stem, stages, head; a cloud partition starts at a stage.
    others = [b for b in names if b not in stages]
    allowed = {names[0], "head"}
    if [b for b in names if b in stages] != list(stages) or not set(others) <= allowed:
        raise ModelError(
            f"blocks must be an optional stem, the stages {list(stages)} in order and an "
            f"optional 'head'; found {names}"
        )
