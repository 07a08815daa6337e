"""He et al.'s white-box attack, rMLE: search for the image whose edge features match.

Given the edge's weights and the features ``z`` sent for an unknown image, the
attacker solves ``min_x ||f(x) - z||^2 / ||z||^2 + tv_weight * TV(x)`` over
images in [0, 1] by gradient descent (Adam). Choices:

* Feature term normalised by the features' energy, per image: the same
  ``tv_weight`` then suits any edge, whatever its feature scale.
* Total variation as the mean absolute difference of neighbouring pixels
  (anisotropic L1): the natural-image prior of rMLE; it suppresses the
  high-frequency patterns that satisfy the features without looking like
  anything, and keeps edges (unlike a squared penalty).
* ``sigmoid`` parametrisation (default): ``x = sigmoid(u)`` stays in [0, 1]
  with gradients everywhere; ``clamp`` optimises ``x`` directly and projects
  after every step (gradients vanish at pixels stuck at 0 or 1).
* Several starts (``inits``, see ``WhiteboxConfig``), each scored; the
  strongest is reported: a flat grey image (no data at all, the pure
  white-box threat model), the attacker data's mean image, or the strongest
  black-box decoder's reconstruction, which rMLE then refines.

Each image costs ``steps`` forward and backward passes through the edge, so
only the first ``max_images`` evaluation images are inverted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from patrol_compress.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    Reconstruction,
    frozen,
    torch_features,
)
from patrol_compress.metrics.image import psnr_per_image, ssim_per_image
from patrol_compress.privacy_config import WhiteboxConfig

EPS = 1e-6
CHUNK = 64


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference between horizontal and vertical neighbours."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def feature_mismatch(edge: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-image ``||f(x) - z||^2 / ||z||^2`` (0 is a perfect match)."""
    diff = (edge(x) - z).flatten(1).pow(2).sum(1)
    return diff / z.flatten(1).pow(2).sum(1).clamp_min(EPS)


def rmle(
    edge: nn.Module, z: torch.Tensor, init: torch.Tensor, cfg: WhiteboxConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise images for target features ``z`` from ``init`` (same device as ``edge``).

    Returns (images, mismatch before, mismatch after), per image.
    """
    if cfg.parametrization == "sigmoid":
        u = torch.logit(init.clamp(0.01, 0.99)).clone().requires_grad_(True)
    else:
        u = init.clone().clamp(0.0, 1.0).requires_grad_(True)

    def image() -> torch.Tensor:
        return torch.sigmoid(u) if cfg.parametrization == "sigmoid" else u

    opt = torch.optim.Adam([u], lr=cfg.lr)
    with frozen(edge):
        with torch.no_grad():
            before = feature_mismatch(edge, image(), z)
        for _ in range(cfg.steps):
            x = image()
            loss = (feature_mismatch(edge, x, z) + cfg.tv_weight * total_variation(x)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.parametrization == "clamp":
                with torch.no_grad():
                    u.clamp_(0.0, 1.0)
        with torch.no_grad():
            x = image().detach()
            after = feature_mismatch(edge, x, z)
    return x, before, after


def _start(ctx: AttackContext, init: str, n: int) -> torch.Tensor:
    """The starting images of one init family for the first ``n`` evaluation images."""
    shape = (n, *ctx.eval_images.shape[1:])
    if init == "mean":
        return ctx.mean_image.expand(shape).clone()
    if init == "decoder":
        from patrol_compress.attacks.blackbox import SHARED_RECON, run_inversion

        if SHARED_RECON not in ctx.shared:  # no black-box attack ran before this one
            features = torch_features(ctx.edge, ctx.device)
            ctx.shared[SHARED_RECON] = run_inversion(
                ctx, features, ctx.config.blackbox, "whitebox-init"
            )[0]
        return ctx.shared[SHARED_RECON][:n].clone()
    return torch.full(shape, 0.5)


def invert(ctx: AttackContext, init: torch.Tensor, cfg: WhiteboxConfig) -> dict[str, Any]:
    """rMLE from ``init`` for the first ``len(init)`` evaluation images, in chunks."""
    edge = ctx.edge.to(ctx.device)
    outs, befores, afters = [], [], []
    images = ctx.eval_images[: len(init)]
    for i in range(0, len(init), CHUNK):
        x = images[i : i + CHUNK].to(ctx.device)
        with torch.no_grad():
            z = edge(x)
        rec, before, after = rmle(edge, z, init[i : i + CHUNK].to(ctx.device), cfg)
        outs.append(rec.cpu())
        befores.append(before.cpu())
        afters.append(after.cpu())
    return {
        "images": torch.cat(outs),
        "feature_mismatch_start": float(torch.cat(befores).mean()),
        "feature_mismatch_end": float(torch.cat(afters).mean()),
    }


@ATTACKS.register("whitebox")
class WhiteboxAttack(Attack):
    """rMLE with a TV prior against the torch edge, from each init; the strongest."""

    name = "whitebox"

    def run(self, ctx: AttackContext) -> Reconstruction:
        cfg = ctx.config.whitebox
        n = min(cfg.max_images, len(ctx.eval_images))
        x = ctx.eval_images[:n]
        families: dict[str, Any] = {}
        recons: dict[str, torch.Tensor] = {}
        for init in cfg.inits:
            out = invert(ctx, _start(ctx, init, n), cfg)
            recons[init] = out.pop("images")
            out["psnr"] = float(psnr_per_image(x, recons[init]).mean())
            out["ssim"] = float(ssim_per_image(x, recons[init]).mean())
            families[init] = out
        best = max(families, key=lambda f: families[f]["psnr"])
        return Reconstruction(
            recons[best],
            {"images": n, "family": best, "families": families, **families[best]},
        )
