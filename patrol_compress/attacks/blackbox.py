"""He et al.'s black-box inversion: learn an inverse network from (features, image) pairs.

The attacker can query the edge (send an image, observe what goes over the
uplink) but not read its weights. It collects features of its own images and
fits a decoder that maps them back. The decoder is
:class:`~patrol_compress.models.inversion.InversionNet`, which mirrors the
edge block by block (the paper: "three 3x3 conv layers at the edge side ->
three 3x3 deconvolution layers"), so its depth and resolution follow the split
being attacked; the attack only widens and deepens it (see ``BlackboxConfig``).

Training minimises the per-pixel MSE (the quantity PSNR is a log of) with Adam
and a cosine learning-rate decay, which reliably gains a dB or more over a
constant rate in the last epochs. Features are recomputed per batch rather
than cached: at deep splits they are small, at shallow ones the cache would
be several times the size of the images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from patrol_compress.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    FeatureFn,
    Reconstruction,
    Shapes,
    torch_features,
)
from patrol_compress.data.base import Item
from patrol_compress.errors import TrainingError
from patrol_compress.models.inversion import InversionNet
from patrol_compress.privacy_config import BlackboxConfig


def build_decoder(shapes: Shapes, cfg: BlackboxConfig) -> InversionNet:
    return InversionNet(shapes, max_width=cfg.max_width, refine=cfg.refine, min_width=cfg.min_width)


def attacker_loader(data: Dataset[Item], cfg: BlackboxConfig, seed: int) -> DataLoader[Item]:
    """Shuffled batches of the attacker's images (at most ``cfg.max_images`` of them)."""
    n = len(data)  # type: ignore[arg-type]
    if cfg.max_images and cfg.max_images < n:
        keep = np.random.default_rng(seed).permutation(n)[: cfg.max_images]
        data = Subset(data, keep.tolist())
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=False)


def train_decoder(
    decoder: nn.Module,
    features: FeatureFn,
    loader: DataLoader[Item],
    cfg: BlackboxConfig,
    device: torch.device,
) -> list[float]:
    """Fit ``decoder`` so that ``decoder(features(x)) ~ x``; returns the mean loss per epoch."""
    decoder.to(device).train()
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * len(loader))
    history: list[float] = []
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        for x, _, _ in loader:
            if len(x) < 2:  # BatchNorm cannot train on a single image
                continue
            z = features(x).to(device)
            x = x.to(device)
            loss = nn.functional.mse_loss(decoder(z), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(x)
            n += len(x)
        mean = total / max(n, 1)
        if not math.isfinite(mean):
            raise TrainingError(f"inversion network loss became {mean} in epoch {epoch + 1}")
        history.append(mean)
    return history


@torch.no_grad()
def decode(
    decoder: nn.Module, features: FeatureFn, images: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Reconstructions of ``images`` through the edge's features (eval-mode decoder)."""
    decoder.eval()
    out = []
    for i in range(0, len(images), 64):
        z = features(images[i : i + 64]).to(device)
        out.append(decoder(z).cpu())
    return torch.cat(out)


def run_inversion(
    ctx: AttackContext, features: FeatureFn, cfg: BlackboxConfig
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train a fresh decoder on the attacker's data through ``features`` and decode the eval set."""
    torch.manual_seed(ctx.config.seed)
    decoder = build_decoder(ctx.shapes, cfg)
    loader = attacker_loader(ctx.attacker_data, cfg, ctx.config.seed)
    history = train_decoder(decoder, features, loader, cfg, ctx.device)
    recon = decode(decoder, features, ctx.eval_images, ctx.device)
    info = {
        "train_images": len(loader.dataset),  # type: ignore[arg-type]
        "decoder_params": sum(p.numel() for p in decoder.parameters()),
        "final_train_mse": history[-1] if history else None,
    }
    return recon, info


@ATTACKS.register("blackbox")
class BlackboxAttack(Attack):
    """Inverse network trained on features of the torch edge partition."""

    name = "blackbox"

    def run(self, ctx: AttackContext) -> Reconstruction:
        recon, info = run_inversion(ctx, torch_features(ctx.edge, ctx.device), ctx.config.blackbox)
        return Reconstruction(recon, info)
