"""The adversarial term's attacker, on Algorithm 1's epoch schedule (Eq. 8-9).

The surrogate is fitted on detached edge features at the first epoch
(``adversary_epochs + warmup_epochs`` passes) and then every
``adversary_every`` epochs (``adversary_epochs`` passes); within an epoch it is
fixed (:func:`~patrol_compress.pruning.surrogate.fixed_attacker`: the frozen
inverter, or the strongest of the suite's decoders). Algorithm 1 trains it at
``t % 10 == 0`` starting from t = 1, which would leave the first nine epochs
fighting an untrained attacker; we fit it before the first epoch.

A loop that never begins epochs has no loader to fit on: the surrogate then
takes one Adam step on each batch's detached features before the edge plays
it, with a one-line warning (what the plug-in did before it had epochs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from patrol_compress import distributed
from patrol_compress.config.recipe import AdversarialConfig
from patrol_compress.errors import PatrolWarning, UsageError
from patrol_compress.models.inversion import reconstruction_l2
from patrol_compress.models.split import StageBlock
from patrol_compress.pruning.surrogate import (
    Attacker,
    SuiteSurrogate,
    fixed_attacker,
    images_of,
    surrogate_fit_loss,
    train_surrogate,
)

SUITE_FIRST_IMAGES = 1024
"""Images a suite surrogate built from your batches standardises on."""

Build = Callable[[torch.Tensor | None], nn.Module]
"""Makes the surrogate for the current edge (from images, for the suite's statistics)."""


class Adversary:
    """The surrogate, its Adam and its schedule; the pruner asks it for ``L_adv``."""

    def __init__(self, cfg: AdversarialConfig, build: Build, every_field: str) -> None:
        self.cfg, self._build, self._every_field = cfg, build, every_field
        self.surrogate: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.attacker: Attacker | None = None
        self.fit_psnr: float | None = None
        """The surrogate's PSNR on its last fit's final batches (None before a fit): whether the
        in-loop attacker learned to invert the edge at all, before the edge trained against it;
        the Eq. 8 loss the history logs as ``adv`` is the error the edge then raises."""
        self._warned = False

    def place(self, surrogate: nn.Module, dev: torch.device) -> None:
        """Hold ``surrogate`` on ``dev`` (channels-last on CPU: same values, faster oneDNN)."""
        surrogate.to(dev)
        fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
        surrogate.to(memory_format=fmt)  # type: ignore[call-overload]
        self.surrogate = surrogate

    def ensure(self, images: torch.Tensor | None, dev: torch.device) -> nn.Module:
        """The surrogate, built on first need (every rank builds it here: rank 0's wins)."""
        if self.surrogate is None:
            built = self._build(images)
            self.place(built, dev)
            distributed.current().broadcast_module(built)
        assert self.surrogate is not None
        return self.surrogate

    def optimizer(self) -> torch.optim.Optimizer:
        if self.opt is None:
            assert self.surrogate is not None
            self.opt = torch.optim.Adam(self.surrogate.parameters(), lr=self.cfg.adversary_lr)
        return self.opt

    def first_images(self, batches: Iterable[Any] | None) -> torch.Tensor | None:
        """Images for a suite built from your batches (only read when it must be built)."""
        if batches is None or self.surrogate is not None or self.cfg.surrogate != "suite":
            return None
        kept: list[torch.Tensor] = []
        for batch in batches:
            kept.append(images_of(batch))
            if sum(len(x) for x in kept) >= SUITE_FIRST_IMAGES:
                break
        return torch.cat(kept) if kept else None

    def begin_epoch(
        self, epoch: int, edge: list[StageBlock], batches: Iterable[Any] | None, dev: torch.device
    ) -> None:
        """Refit when due (the edge frozen, in eval mode: the caller's), then fix the attacker."""
        surrogate = self.ensure(self.first_images(batches), dev)
        if epoch % self.cfg.adversary_every == 0:
            if batches is None:
                raise UsageError(
                    f"begin_epoch: the surrogate attacker is refitted this epoch "
                    f"({self._every_field}); pass the epoch's batches (your loader)"
                )
            passes = self.cfg.adversary_epochs + (self.cfg.warmup_epochs if epoch == 0 else 0)
            self.fit_psnr = train_surrogate(surrogate, edge, batches, self.optimizer(), passes, dev)
        surrogate.eval()
        # The epoch's fixed attacker: the surrogate's eval-mode function with no
        # weight gradients (a mirror's BNs folded: same values, faster).
        self.attacker = fixed_attacker(surrogate)

    def loss(self, x: torch.Tensor, z: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """``L_adv`` of the batch: the epoch's attacker, or one online step first."""
        attacker = self.attacker or self._online(x, z, dev)
        return attacker(x, z)

    def _online(self, x: torch.Tensor, z: torch.Tensor, dev: torch.device) -> Attacker:
        if not self._warned:
            self._warned = True
            warnings.warn(
                "adversarial term without begin_epoch(loader): the surrogate takes one step "
                "on each batch's edge features; call pruner.begin_epoch(loader) each epoch "
                "for the recipes' schedule (adversary_every, adversary_epochs)",
                PatrolWarning,
                stacklevel=5,
            )
        surrogate = self.ensure(x, dev)
        surrogate.requires_grad_(True).train()
        fit = surrogate_fit_loss(surrogate, x, z.detach())
        opt = self.optimizer()
        opt.zero_grad(set_to_none=True)
        fit.backward()
        opt.step()
        surrogate.requires_grad_(False).eval()
        if isinstance(surrogate, SuiteSurrogate):
            return fixed_attacker(surrogate)
        return lambda xs, zs: reconstruction_l2(xs, surrogate(zs))

    def reset(self) -> None:
        """A fresh surrogate, built on first need: the edge changed (removal)."""
        self.surrogate, self.opt, self.attacker, self.fit_psnr = None, None, None, None
