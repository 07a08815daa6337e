"""What every inversion attack receives and returns, and the registry of attacks.

An attack gets an :class:`AttackContext` (the run's model and its edge
partition at split K, the attacker's own images, the evaluation images) and
returns reconstructions of the evaluation images. Scoring is not the attack's
job: :mod:`patrol_compress.attacks.evaluate` scores every attack the same way,
so attacks cannot differ in how they are measured.

Attacks are classes registered in :data:`ATTACKS` by name; each reads its own
section of the :class:`~patrol_compress.attacks.config.AttackConfig`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from patrol_compress.attacks.parts import PartStore
from patrol_compress.attacks.progress import AttackProgress, PartEstimate
from patrol_compress.config.privacy import AttackConfig
from patrol_compress.data.base import Item
from patrol_compress.errors import PatrolError
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.registry import Registry

Shapes = list[tuple[tuple[int, int, int], tuple[int, int, int]]]
FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""Images (N x C x H x W on CPU, [0, 1]) -> edge features (N x C' x H' x W' on CPU)."""

FEATURE_BATCH = 64


@dataclass
class AttackContext:
    """Everything an attack may use.

    ``model`` is the whole network (white-box attackers and exporters need it);
    ``edge`` shares its modules. ``shapes`` are the (input, output) C x H x W of
    each edge stage block (stem folded into the first), which the inversion
    network mirrors. ``attacker_data`` yields ``(image, pid, camid)`` items the
    attacker may train on; ``eval_images`` are never in it.
    """

    model: BlockNet
    edge: BlockNet
    split: int
    input_shape: tuple[int, int, int]
    shapes: Shapes
    attacker_data: Dataset[Item]
    eval_images: torch.Tensor
    mean_image: torch.Tensor
    config: AttackConfig
    device: torch.device
    run_dir: Path | None = None
    quiet: bool = False
    """No progress lines."""
    progress: AttackProgress | None = None
    """Where parts report their progress (None: silent)."""
    parts: PartStore | None = None
    """Finished parts kept for ``attack --resume`` (None: nothing kept)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Results one attack leaves for a later one in the same run (e.g. the
    strongest black-box reconstruction, the white-box attack's ``decoder`` start)."""


@dataclass
class Reconstruction:
    """Reconstructions of every evaluation image and attack-specific facts.

    ``info["val_psnr"]`` is the attack's score on the attacker's own
    validation images (the suite chooses its strongest attack by it).
    """

    images: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """One inversion attack; subclasses are registered in :data:`ATTACKS`."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, ctx: AttackContext) -> Reconstruction:
        """Reconstruct every image of ``ctx.eval_images``, in order."""

    def estimate(self, ctx: AttackContext, done: set[str]) -> list[PartEstimate]:
        """The parts this attack will run (those not in ``done``) and their measured cost."""
        return []


ATTACKS: Registry[type[Attack]] = Registry("attack")


class AttackError(PatrolError):
    """An attack cannot run as asked (nothing selected, unusable data)."""


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters without gradients for the duration (restored after): only inputs are optimised."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def torch_features(edge: nn.Module, device: torch.device) -> FeatureFn:
    """Feature function of the torch edge (eval mode, no gradients)."""

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        out = [
            edge(x[i : i + FEATURE_BATCH].to(device)).cpu() for i in range(0, len(x), FEATURE_BATCH)
        ]
        return torch.cat(out)

    return features
