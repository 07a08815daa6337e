"""Training an inversion decoder until it stops improving, on (edge features, image) pairs.

The attacker's images are split once into a training part and a held-out
validation part (seeded). Each decoder is trained with Adam on the per-pixel
MSE (the quantity PSNR is a log of; ``blackbox.loss: mix`` adds SSIM) and
scored on the validation part after every epoch by mean per-image PSNR, the
number the evaluation reports. The learning rate halves after
``patience // 2`` epochs without an improvement of ``min_delta_db``; training
stops after ``patience`` such epochs or ``epochs`` in all, and the best
validation epoch's weights are restored: the epoch is the attacker's choice on
its own data. (A fixed cosine schedule of 20 epochs, which would make the
duration known in advance, was measured 0.5 dB weaker on the quickstart's
split-4 edge: ``docs/measurements.md``.) The validation curve, epochs run and
images used are returned for ``attack.json``, so a reader can see whether the
attacker converged. On CPU the decoders run in channels-last memory format
(same values, faster convolutions).

Features of a deterministic edge are computed once and kept (at deep splits
they are small; the edge pass would otherwise dominate every epoch). A
randomised edge (noise, dropout and skip defenses draw fresh randomness per
query) is queried anew for every batch, as an attacker with device access
would see it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from patrol_compress.attacks.base import FeatureFn
from patrol_compress.attacks.progress import TYPICAL_EPOCHS_FACTOR, AttackProgress
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.data.base import Item
from patrol_compress.errors import TrainingError
from patrol_compress.metrics.image import psnr_per_image, ssim_per_image

MIX_SSIM_WEIGHT = 0.84
"""Weight of ``1 - SSIM`` in the ``mix`` loss (the rest is L1): Zhao et al.'s published mix."""
LOAD_BATCH = 256
STATS_IMAGES = 4096
"""Feature statistics for standardisation come from at most this many training images."""


def _images(data: Dataset[Any]) -> torch.Tensor:
    """Every image of ``data`` stacked (N x C x H x W)."""
    loader = DataLoader(data, batch_size=LOAD_BATCH, shuffle=False)
    return torch.cat([batch[0] for batch in loader])


class Pairs:
    """(features, image) batches of a fixed set of images.

    In memory (images stacked, features of a deterministic edge computed once)
    when they fit the budget; otherwise streamed from the dataset with the
    edge queried per batch, so a 400,000-image re-id set does not have to fit
    in RAM.
    """

    def __init__(self, data: Dataset[Any], features: FeatureFn, memory: bool, cache: bool) -> None:
        self.data = data
        self.features = features
        self.images = _images(data) if memory else None
        self.cached = features(self.images) if cache and self.images is not None else None

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def batches(
        self, batch_size: int, seed: int | None = None, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (with ``seed``) or in-order batches of the first ``limit`` images."""
        n = len(self) if limit is None else min(limit, len(self))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        order = torch.randperm(len(self), generator=gen)[:n] if gen else torch.arange(n)
        if self.images is None:
            loader = DataLoader(Subset(self.data, order.tolist()), batch_size=batch_size)
            for batch in loader:
                yield self.features(batch[0]), batch[0]
            return
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = self.images[idx]
            z = self.cached[idx] if self.cached is not None else self.features(x)
            yield z, x

    @torch.no_grad()
    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the features over images and positions."""
        total = sq = None
        count = 0
        for z, _ in self.batches(LOAD_BATCH, limit=STATS_IMAGES):
            z = z.double()
            s, q = z.sum((0, 2, 3)), z.pow(2).sum((0, 2, 3))
            total = s if total is None else total + s
            sq = q if sq is None else sq + q
            count += z.shape[0] * z.shape[2] * z.shape[3]
        if total is None or sq is None:
            raise TrainingError("the attacker has no training images")
        mean = total / count
        var = (sq / count - mean.pow(2)).clamp_min(0.0)
        return mean.float(), var.sqrt().float()


def is_deterministic(features: FeatureFn, probe: torch.Tensor) -> bool:
    """Whether two queries of the same images give identical features."""
    return bool(torch.equal(features(probe), features(probe)))


@dataclass
class AttackerData:
    """The attacker's training and validation pairs, and how they were chosen."""

    train: Pairs
    val: Pairs
    info: dict[str, Any]


def attacker_pairs(
    data: Dataset[Item], features: FeatureFn, cfg: BlackboxConfig, seed: int
) -> AttackerData:
    """Split the attacker's images (capped by ``cfg.max_images``) into train and validation.

    Images and features stay in memory while both fit ``cfg.feature_cache_mb``
    (features only for a deterministic edge); the validation slice always does.
    """
    n_all = len(data)  # type: ignore[arg-type]
    order = np.random.default_rng(seed).permutation(n_all)
    if cfg.max_images and cfg.max_images < n_all:
        order = order[: cfg.max_images]
    n = len(order)
    n_val = min(cfg.max_val_images, max(1, round(cfg.val_fraction * n)))
    if n - n_val < 2:
        raise TrainingError(
            f"the attacker has {n} image(s); at least {n_val + 2} are needed for training "
            "and validation (raise blackbox.max_images or use more data)"
        )
    probe = torch.stack([data[int(i)][0] for i in order[: min(4, n)]])
    deterministic = is_deterministic(features, probe)
    image_bytes = probe[0].numel() * 4
    feature_bytes = int(np.prod(features(probe[:1]).shape[1:])) * 4
    budget = cfg.feature_cache_mb * 2**20
    memory = n * (image_bytes + (feature_bytes if deterministic else 0)) <= budget
    val = Pairs(Subset(data, order[:n_val].tolist()), features, True, deterministic)
    train = Pairs(Subset(data, order[n_val:].tolist()), features, memory, deterministic)
    info = {
        "images_available": n_all,
        "images_used": n,
        "train_images": n - n_val,
        "val_images": n_val,
        "cap": cfg.max_images or None,
        "in_memory": memory,
        "features_cached": memory and deterministic,
        "edge_deterministic": deterministic,
    }
    return AttackerData(train, val, info)


@torch.no_grad()
def decode(decoder: nn.Module, pairs: Pairs, device: torch.device) -> torch.Tensor:
    """Reconstructions of every image of ``pairs``, in order (eval-mode decoder)."""
    decoder.eval()
    return torch.cat([decoder(z.to(device)).cpu() for z, _ in pairs.batches(LOAD_BATCH)])


def _channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """On CPU, oneDNN runs the decoders' convolutions ~20% faster in channels-last memory
    format (measured on the quickstart's upsample decoder, one thread); same values up
    to float rounding."""
    if device.type == "cpu":
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
    """The decoder's training loss (``BlackboxConfig.loss``): MSE, or Zhao et al.'s SSIM/L1 mix."""
    if loss == "mse":
        return nn.functional.mse_loss(recon, x)
    ssim = ssim_per_image(x, recon).mean()
    return MIX_SSIM_WEIGHT * (1.0 - ssim) + (1.0 - MIX_SSIM_WEIGHT) * (recon - x).abs().mean()


def train_epoch(
    decoder: nn.Module,
    data: AttackerData,
    cfg: BlackboxConfig,
    opt: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    seed: int,
    limit: int | None = None,
) -> float:
    """One epoch of ``cfg.loss`` on the attacker's training pairs; the mean loss."""
    decoder.train()
    total, n = 0.0, 0
    for z, x in data.train.batches(cfg.batch_size, seed=seed + epoch, limit=limit):
        if len(x) < 2:  # BatchNorm cannot train on a single image
            continue
        x = x.to(device)
        loss = reconstruction_loss(decoder(z.to(device)), x, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1)


def time_epoch(
    decoder: nn.Module, data: AttackerData, cfg: BlackboxConfig, device: torch.device
) -> float:
    """Seconds one training epoch of ``decoder`` takes, timed on two batches of a copy.

    The copy keeps the decoder's own initialisation (and the optimiser state)
    untouched, so estimating the attack does not change what it computes.
    """
    probe = _channels_last(copy.deepcopy(decoder).to(device), device)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, len(data.train))
    train_epoch(probe, data, cfg, opt, device, 0, 0, limit=batch)  # warm-up
    start = time.perf_counter()
    train_epoch(probe, data, cfg, opt, device, 0, 1, limit=2 * batch)
    per_image = (time.perf_counter() - start) / (2 * batch)
    start = time.perf_counter()
    decode(probe, data.val, device)
    return per_image * len(data.train) + (time.perf_counter() - start)


def fit_decoder(
    decoder: nn.Module,
    data: AttackerData,
    cfg: BlackboxConfig,
    device: torch.device,
    label: str,
    seed: int,
    progress: AttackProgress | None = None,
) -> dict[str, Any]:
    """Train ``decoder`` to its best validation PSNR (module docstring); returns the record."""
    decoder.to(device)
    _channels_last(decoder, device)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    best, best_state, bad, stop = -math.inf, copy.deepcopy(decoder.state_dict()), 0, "epochs"
    curve: list[dict[str, float]] = []
    x_val = data.val.images if data.val.images is not None else _images(data.val.data)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        train_loss = train_epoch(decoder, data, cfg, opt, device, epoch, seed)
        if not math.isfinite(train_loss):
            raise TrainingError(f"{label}: inversion loss became {train_loss} in epoch {epoch + 1}")
        val = float(psnr_per_image(x_val, decode(decoder, data.val, device)).mean())
        # "train_mse" is the training loss: the MSE unless blackbox.loss says otherwise.
        curve.append({"epoch": epoch + 1, "train_mse": train_loss, "val_psnr": val, "lr": _lr(opt)})
        if val > best:
            best_state = copy.deepcopy(decoder.state_dict())
        if val > best + cfg.min_delta_db:
            bad = 0
        else:
            bad += 1
            if bad % max(1, cfg.patience // 2) == 0:
                for group in opt.param_groups:
                    group["lr"] *= 0.5
        best = max(best, val)
        stopping = bad >= cfg.patience
        if progress is not None:
            epoch_s = (time.perf_counter() - started) / (epoch + 1)
            progress.step(
                label,
                epoch + 1,
                cfg.epochs,
                f"val {val:.2f} dB (best {best:.2f})",
                epoch_s,
                0.0 if stopping else expected_epochs(cfg) - (epoch + 1),
                final=stopping or epoch + 1 == cfg.epochs,
            )
        if stopping:
            stop = "plateau"
            break
    decoder.load_state_dict(best_state)
    record = {
        "epochs_run": len(curve),
        "stopped": stop,
        "best_val_psnr": best,
        "curve": curve,
        "decoder_params": sum(p.numel() for p in decoder.parameters()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if progress is not None:
        progress.finish(
            label, f"{len(curve)} epoch(s), best validation PSNR {best:.2f} dB ({stop})"
        )
    return record


def expected_epochs(cfg: BlackboxConfig) -> float:
    """The epochs a plateau-stopped decoder is expected to run
    (see :mod:`patrol_compress.attacks.progress`)."""
    return float(min(cfg.epochs, TYPICAL_EPOCHS_FACTOR * cfg.patience))


def epoch_range(cfg: BlackboxConfig) -> tuple[float, float, float]:
    """(fewest, expected, most) epochs of one decoder under ``cfg``."""
    return float(min(cfg.epochs, cfg.patience + 1)), expected_epochs(cfg), float(cfg.epochs)


def _lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0]["lr"])
