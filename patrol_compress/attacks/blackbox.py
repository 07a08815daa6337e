"""He et al.'s black-box inversion: learn an inverse network from (features, image) pairs.

The attacker can query the edge (send an image, observe what goes over the
uplink) but not read its weights. It collects features of its own images and
fits decoders that map them back: every configured decoder family
(:mod:`patrol_compress.attacks.decoders`), each trained until its validation
PSNR stops improving (:mod:`patrol_compress.attacks.fit`). The reported
reconstruction is the family with the highest PSNR on the evaluation images:
a defense is judged by the worst case, and ``info["families"]`` keeps every
family's scores, so a reader sees how much the choice mattered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

from patrol_compress.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    FeatureFn,
    Reconstruction,
    torch_features,
)
from patrol_compress.attacks.decoders import DecoderSpec, build_decoders
from patrol_compress.attacks.fit import Pairs, attacker_pairs, decode, fit_decoder
from patrol_compress.errors import TrainingError
from patrol_compress.metrics.image import psnr_per_image, ssim_per_image
from patrol_compress.privacy_config import BlackboxConfig

SHARED_RECON = "blackbox_reconstruction"
"""Key in :attr:`AttackContext.shared` of the strongest black-box reconstruction
(the white-box attack's ``decoder`` start)."""


def run_inversion(
    ctx: AttackContext, features: FeatureFn, cfg: BlackboxConfig, name: str = "blackbox"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train every decoder family on the attacker's data through ``features``; the strongest."""
    data = attacker_pairs(ctx.attacker_data, features, cfg, ctx.config.seed)
    if data.info["cap"] and not ctx.quiet:
        from patrol_compress.train.loop import console

        console.print(
            f"[{name}] attacker images capped at {data.info['images_used']:,} of "
            f"{data.info['images_available']:,} (blackbox.max_images)",
            highlight=False,
            markup=False,
        )
    mean, std = data.train.channel_stats()
    z = next(data.val.batches(1))[0]
    spec = DecoderSpec(
        shapes=ctx.shapes,
        feature_shape=(int(z.shape[1]), int(z.shape[2]), int(z.shape[3])),
        image_shape=ctx.input_shape,
        mean=mean,
        std=std,
    )
    torch.manual_seed(ctx.config.seed)
    decoders = build_decoders(spec, cfg)
    if not decoders:
        raise TrainingError(
            f"{name}: no decoder family applies to {list(spec.feature_shape)} features "
            f"(families: {cfg.families}); add 'upsample' or 'mirror'"
        )
    evaluation = Pairs(TensorDataset(ctx.eval_images), features, memory=True, cache=False)
    families: dict[str, Any] = {}
    recons: dict[str, torch.Tensor] = {}
    for family, decoder in decoders.items():
        torch.manual_seed(ctx.config.seed)
        record = fit_decoder(
            decoder, data, cfg, ctx.device, f"{name}/{family}", ctx.config.seed, ctx.quiet
        )
        recon = decode(decoder, evaluation, ctx.device)
        record["psnr"] = float(psnr_per_image(ctx.eval_images, recon).mean())
        record["ssim"] = float(ssim_per_image(ctx.eval_images, recon).mean())
        families[family] = record
        recons[family] = recon
    best = max(families, key=lambda f: families[f]["psnr"])
    info = {
        "family": best,
        "families": families,
        "data": data.info,
        "feature_shape": list(spec.feature_shape),
        "epochs_run": families[best]["epochs_run"],
        "best_val_psnr": families[best]["best_val_psnr"],
    }
    return recons[best], info


@ATTACKS.register("blackbox")
class BlackboxAttack(Attack):
    """Inverse networks trained on features of the torch edge partition; the strongest."""

    name = "blackbox"

    def run(self, ctx: AttackContext) -> Reconstruction:
        recon, info = run_inversion(ctx, torch_features(ctx.edge, ctx.device), ctx.config.blackbox)
        ctx.shared[SHARED_RECON] = recon
        return Reconstruction(recon, info)
