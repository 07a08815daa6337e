"""The surrogate attacker of PATROL's adversarial term (Eq. 8-9): built, fitted, frozen, scored.

The paper's attacker is one decoder that mirrors the edge (:func:`build_surrogate`,
an :class:`~patrol_compress.models.inversion.InversionNet` without refinement
convolutions: it runs forward and backward in every step, and the
full-resolution refinements doubled its cost). ``adversarial.surrogate: suite``
replaces it by the attack suite's decoder families (:class:`SuiteSurrogate`),
fitted side by side; the edge then maximises the error of the strongest of
them on each batch (see :class:`~patrol_compress.config.recipe.AdversarialConfig`
for why, and what it measured).

Within an epoch the attacker is fixed: :func:`fixed_attacker` turns it into a
function of ``(x, z)`` whose gradient flows to the edge's features only. For the
mirror that is :func:`~patrol_compress.models.inversion.frozen_inverter` (BNs
folded, no weight gradients, CPU batch slices): the same function, faster
(``tests/test_training_speed_equivalence.py``). The no-grad edge pass that feeds
the surrogate's fit runs channels-last on CPU (:func:`edge_features`).

Distributed runs (:mod:`patrol_compress.distributed`): the fit averages the
surrogate's gradients over ranks after each backward pass, and the PSNR score
gathers every rank's per-image values, so both equal what one process computes.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from patrol_compress import distributed
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.inversion import InversionNet, frozen_inverter, reconstruction_l2
from patrol_compress.models.split import StageBlock, edge_shapes, edge_stage_blocks

SUITE_STATS_IMAGES = 1024
"""Training images whose edge features set the suite decoders' standardisation."""


class SuiteSurrogate(nn.Module):
    """The attack suite's decoder families as one surrogate, trained side by side.

    Each decoder is fitted on its own reconstruction loss (their sum, whose
    gradients do not mix); the edge's adversarial term is the error of the
    best decoder on the batch (:func:`fixed_attacker`).
    """

    def __init__(self, decoders: dict[str, nn.Module]) -> None:
        super().__init__()
        self.decoders = nn.ModuleDict(decoders)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructions of every decoder, stacked (K x N x C x H x W)."""
        return torch.stack([d(z) for d in self.decoders.values()])


Surrogate = InversionNet | SuiteSurrogate
Attacker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_surrogate(
    model: BlockNet, split: int, input_shape: tuple[int, int, int], width: int
) -> InversionNet:
    """The paper's mirror decoder for the edge at ``split`` (at most ``width`` channels)."""
    return InversionNet(edge_shapes(model, split, input_shape), max_width=width, refine=0)


@torch.no_grad()
def suite_surrogate(
    model: BlockNet,
    split: int,
    images: Dataset[Any],
    input_shape: tuple[int, int, int],
    blackbox: BlackboxConfig,
) -> SuiteSurrogate:
    """The suite's families for this edge, standardised on its features of ``images``.

    ``images`` yields ``(image, ...)`` items; their eval-mode edge features give
    the per-channel statistics, computed as the attack suite computes its own
    (:meth:`~patrol_compress.attacks.fit.Pairs.channel_stats`). A channel that
    dies later stays in the decoders' input as a constant, and each decoder's
    first BatchNorm re-scales features that a Lipschitz term shrinks, so the
    decoders need no rebuild during the stage.
    """
    from patrol_compress.attacks.decoders import DecoderSpec, build_decoders
    from patrol_compress.attacks.fit import Pairs

    was_training = model.training
    model.eval()
    edge = edge_stage_blocks(model, split)
    dev = next(model.parameters()).device

    def features(x: torch.Tensor) -> torch.Tensor:
        z = x.to(dev)
        for b in edge:
            z = b(z)
        return z.float().cpu()

    pairs = Pairs(images, features, memory=True, cache=False)
    mean, std = pairs.channel_stats()
    model.train(was_training)
    shapes = edge_shapes(model, split, input_shape)
    spec = DecoderSpec(
        shapes=shapes,
        feature_shape=shapes[-1][1],  # the last edge block's output
        image_shape=input_shape,
        mean=mean,
        std=std,
    )
    return SuiteSurrogate(build_decoders(spec, blackbox))


def surrogate_fit_loss(surrogate: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """What fitting the surrogate minimises: Eq. 8 (summed over a suite's decoders)."""
    if isinstance(surrogate, SuiteSurrogate):
        return sum(
            (reconstruction_l2(x, d(z)) for d in surrogate.decoders.values()),
            x.new_zeros(()),
        )
    return reconstruction_l2(x, surrogate(z))


def fixed_attacker(surrogate: nn.Module) -> Attacker:
    """The epoch's fixed attacker as ``(x, z) -> L_adv``, gradients flowing to ``z`` only.

    Mirror: Eq. 8 of :func:`frozen_inverter` (the same function, faster). Suite:
    the smallest Eq. 8 error among the decoders, i.e. the strongest attacker
    on this batch.
    """
    if isinstance(surrogate, SuiteSurrogate):
        frozen = [
            copy.deepcopy(d).eval().requires_grad_(False) for d in surrogate.decoders.values()
        ]
        return lambda x, z: torch.stack([reconstruction_l2(x, d(z)) for d in frozen]).min()
    inverter = frozen_inverter(surrogate)
    return lambda x, z: reconstruction_l2(x, inverter(z))


@torch.no_grad()
def edge_features(edge: list[StageBlock], x: torch.Tensor) -> torch.Tensor:
    """The edge's output for ``x`` without gradients (what the surrogate learns to invert).

    On CPU the images enter in channels-last memory format: oneDNN then runs
    the whole edge in that format, ~15% faster here, and hands the surrogate
    (itself channels-last on CPU) its input in the layout it wants. Same
    values up to float rounding.
    """
    z = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
    for b in edge:
        z = b(z)
    return z


def images_of(batch: object) -> torch.Tensor:
    """The images of a batch: the batch itself, or the first item of an ``(x, ...)`` tuple."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"expected image batches or (images, ...) tuples, found {type(batch).__name__}")


def batches_of(source: Iterable[Any]) -> Iterator[Any]:
    """``source``'s batches; a DataLoader through ``Dist.batches`` (rank shares, RNG aligned)."""
    if isinstance(source, DataLoader):
        return distributed.current().batches(source)
    return iter(source)


def train_surrogate(
    surrogate: nn.Module,
    edge: list[StageBlock],
    loader: Iterable[Any],
    opt: torch.optim.Optimizer,
    epochs: int,
    dev: torch.device,
) -> float:
    """Fit the surrogate on (edge features, image) pairs with the edge frozen.

    Returns the fitted surrogate's mean per-image PSNR on the last
    :data:`FIT_PSNR_BATCHES` batches of its final pass (eval mode; NaN with no
    batches): how well the in-loop attacker inverts the edge at the moment it
    is fixed, before the edge trains against it. Scored on batches it was just
    fitted on (a training PSNR, the most it can claim) and kept from that pass,
    so the loader is not read again and the sampler's order stays what it was.
    """
    ctx = distributed.current()
    params = list(surrogate.parameters())
    surrogate.train()
    kept: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=FIT_PSNR_BATCHES)
    for _ in range(epochs):
        kept.clear()
        for batch in batches_of(loader):
            x = images_of(batch).to(dev)
            z = edge_features(edge, x)
            loss = surrogate_fit_loss(surrogate, x, z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ctx.average_grads(params)
            opt.step()
            kept.append((x, z))
    return psnr_of_pairs(surrogate, kept)


FIT_PSNR_BATCHES = 2
"""Batches of the surrogate's final fitting pass its fit PSNR is scored on."""


@torch.no_grad()
def psnr_of_pairs(
    surrogate: nn.Module, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Mean per-image PSNR (data range 1) of the surrogate's reconstructions of ``(x, z)`` pairs.

    A suite reports its best decoder (highest mean PSNR), as the attack suite
    reports its strongest family. Distributed: each rank scores its share and
    the per-image values are gathered, so the mean is over the images one
    process would score.
    """
    ctx = distributed.current()
    surrogate.eval()
    if isinstance(surrogate, SuiteSurrogate):
        decoders: list[nn.Module] = list(surrogate.decoders.values())
    else:
        decoders = [frozen_inverter(surrogate)]  # the same function, faster
    vals: list[list[torch.Tensor]] = [[] for _ in decoders]
    for x, z in pairs:
        for k, d in enumerate(decoders):
            mse = (d(z) - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            vals[k].append(ctx.gather_rows(10 * torch.log10(1.0 / mse)).cpu())
    if not vals[0]:
        return float("nan")
    return max(float(torch.cat(v).mean()) for v in vals)


@torch.no_grad()
def surrogate_psnr(
    surrogate: nn.Module,
    edge: list[StageBlock],
    loader: Iterable[Any],
    dev: torch.device,
    max_batches: int = 4,
) -> float:
    """Mean per-image PSNR of the surrogate on the loader's first batches (psnr_of_pairs)."""

    def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(batches_of(loader)):
            if i >= max_batches:
                return
            x = images_of(batch).to(dev)
            yield x, edge_features(edge, x)

    return psnr_of_pairs(surrogate, pairs())
