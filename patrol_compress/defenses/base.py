"""What a baseline defense is, and the registry that names them.

A defense takes the trained (undefended) target and a split K and returns a
*defended copy* whose edge partition is what the device would run: the
perturbation defenses insert random modules that stay active in eval mode
(they are the deployed edge, not a training trick), APP returns retrained
weights. The original model is never modified, so one loaded target serves a
whole strength sweep.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from patrol_compress.config.privacy import DefenseSweep
from patrol_compress.config.recipe import Recipe
from patrol_compress.data.base import DataBundle
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import check_split
from patrol_compress.registry import Registry


@dataclass
class DefenseContext:
    """What a defense may use besides the model: the data it may train on and the recipe."""

    data: DataBundle
    recipe: Recipe
    sweep: DefenseSweep
    device: torch.device
    seed: int = 0


class Defense(ABC):
    """One baseline defense; subclasses are registered in :data:`DEFENSES`."""

    name: ClassVar[str]
    parameter: ClassVar[str]
    """What ``strength`` means for this defense (shown in labels and reports)."""

    @abstractmethod
    def apply(self, model: BlockNet, split: int, strength: float, ctx: DefenseContext) -> BlockNet:
        """A defended copy of ``model`` for split ``split`` (``model`` stays untouched)."""


DEFENSES: Registry[type[Defense]] = Registry("defense")


def defended_copy(model: BlockNet, split: int) -> BlockNet:
    """A deep copy in eval mode, after checking that ``split`` exists."""
    check_split(model, split)
    out = copy.deepcopy(model)
    out.eval()
    return out
