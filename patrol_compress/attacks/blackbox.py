"""He et al.'s black-box inversion: learn an inverse network from (features, image) pairs.

The attacker can query the edge (send an image, observe what goes over the
uplink) but not read its weights. It collects features of its own images and
fits decoders that map them back: every configured decoder family
(:mod:`patrol_compress.attacks.decoders`), each trained until its validation
PSNR stops improving (:mod:`patrol_compress.attacks.fit`).

Every choice is the attacker's, made on its own data: the family reported is
the one with the best PSNR on the attacker's held-out validation images
(never on the evaluation images, which only score), and each family keeps its
best validation epoch. ``info["families"]`` still lists every family's
evaluation scores, so a reader sees how much the choice mattered.

The trained decoders are kept in :attr:`AttackContext.shared`
(:class:`Inversion`): the white-box attack starts from the chosen one's
reconstructions, and the adaptive attack reuses them when the exported
artifact computes the same function as the torch edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
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
from patrol_compress.attacks.fit import (
    AttackerData,
    Pairs,
    attacker_pairs,
    decode,
    epoch_range,
    fit_decoder,
    time_epoch,
)
from patrol_compress.attacks.progress import PartEstimate
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.errors import TrainingError
from patrol_compress.metrics.image import psnr_per_image, ssim_per_image

SHARED_INVERSION = "blackbox_inversion"
"""Key in :attr:`AttackContext.shared` of the black-box attack's :class:`Inversion`."""
SHARED_DATA = "attacker_data"
"""Key in :attr:`AttackContext.shared` of the torch edge's :class:`AttackerData`."""


@dataclass
class Inversion:
    """Trained decoders of one feature function, and the attacker-side choice among them."""

    data: AttackerData
    decoders: dict[str, nn.Module]
    records: dict[str, dict[str, Any]]
    chosen: str
    """The family with the best validation PSNR."""

    def decode(self, pairs: Pairs, family: str | None = None) -> torch.Tensor:
        decoder = self.decoders[family or self.chosen]
        return decode(decoder, pairs, next(decoder.parameters()).device)


def torch_attacker_data(ctx: AttackContext) -> AttackerData:
    """The attacker's train/validation pairs through the torch edge, built once per attack."""
    if SHARED_DATA not in ctx.shared:
        features = torch_features(ctx.edge, ctx.device)
        ctx.shared[SHARED_DATA] = attacker_pairs(
            ctx.attacker_data, features, ctx.config.blackbox, ctx.config.seed
        )
    data: AttackerData = ctx.shared[SHARED_DATA]
    return data


def build_family_decoders(
    ctx: AttackContext, data: AttackerData, cfg: BlackboxConfig
) -> dict[str, nn.Module]:
    """Every applicable family, each initialised from the attack's seed on its own."""
    mean, std = data.train.channel_stats()
    z = next(data.val.batches(1))[0]
    spec = DecoderSpec(
        shapes=ctx.shapes,
        feature_shape=(int(z.shape[1]), int(z.shape[2]), int(z.shape[3])),
        image_shape=ctx.input_shape,
        mean=mean,
        std=std,
    )
    out: dict[str, nn.Module] = {}
    for family in cfg.families:
        torch.manual_seed(ctx.config.seed)
        built = build_decoders(spec, cfg.model_copy(update={"families": [family]}))
        out.update(built)
    if not out:
        raise TrainingError(
            f"no decoder family applies to {list(spec.feature_shape)} features "
            f"(families: {cfg.families}); add 'upsample' or 'mirror'"
        )
    return out


def estimate_inversion(
    ctx: AttackContext, data: AttackerData, cfg: BlackboxConfig, name: str, done: set[str]
) -> list[PartEstimate]:
    """Per family still to train, its measured epoch time and epoch range."""
    low, typical, high = epoch_range(cfg)
    out = []
    for family, decoder in build_family_decoders(ctx, data, cfg).items():
        part = f"{name}/{family}"
        if part in done:
            continue
        unit = time_epoch(decoder, data, cfg, ctx.device)
        out.append(PartEstimate(part, unit, low, typical, high))
    return out


def run_inversion(
    ctx: AttackContext, data: AttackerData, cfg: BlackboxConfig, name: str = "blackbox"
) -> Inversion:
    """Train (or load, when resuming) every decoder family on ``data``; choose by validation."""
    if data.info["cap"] and ctx.progress is not None:
        ctx.progress.say(
            f"{name}: attacker images capped at {data.info['images_used']:,} of "
            f"{data.info['images_available']:,} (blackbox.max_images)"
        )
    decoders = build_family_decoders(ctx, data, cfg)
    records: dict[str, dict[str, Any]] = {}
    for family, decoder in decoders.items():
        part = f"{name}/{family}"
        found = ctx.parts.load(part) if ctx.parts is not None else None
        if found is not None:
            record, state = found
            decoder.load_state_dict(state)
            decoder.to(ctx.device)
        else:
            torch.manual_seed(ctx.config.seed)
            record = fit_decoder(
                decoder, data, cfg, ctx.device, part, ctx.config.seed, ctx.progress
            )
            if ctx.parts is not None:
                ctx.parts.save(part, record, dict(decoder.state_dict()))
        records[family] = record
    chosen = max(records, key=lambda f: records[f]["best_val_psnr"])
    return Inversion(data, decoders, records, chosen)


def evaluation_pairs(ctx: AttackContext, features: FeatureFn) -> Pairs:
    return Pairs(TensorDataset(ctx.eval_images), features, memory=True, cache=False)


def inversion_result(
    ctx: AttackContext, inversion: Inversion, evaluation: Pairs
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The chosen family's reconstructions of the evaluation images, and the attack's info.

    Every family's evaluation scores are recorded for the reader; the choice
    was made before, on validation.
    """
    families: dict[str, Any] = {}
    chosen_recon = None
    for family in inversion.decoders:
        recon = inversion.decode(evaluation, family)
        record = dict(inversion.records[family])
        record["psnr"] = float(psnr_per_image(ctx.eval_images, recon).mean())
        record["ssim"] = float(ssim_per_image(ctx.eval_images, recon).mean())
        families[family] = record
        if family == inversion.chosen:
            chosen_recon = recon
    if chosen_recon is None:  # pragma: no cover - the chosen family is one of the decoders
        raise TrainingError(f"family {inversion.chosen} was not trained")
    best = families[inversion.chosen]
    info = {
        "family": inversion.chosen,
        "chosen_by": "best PSNR on the attacker's validation images",
        "families": families,
        "data": inversion.data.info,
        "epochs_run": best["epochs_run"],
        "best_val_psnr": best["best_val_psnr"],
        "val_psnr": best["best_val_psnr"],
    }
    return chosen_recon, info


@ATTACKS.register("blackbox")
class BlackboxAttack(Attack):
    """Inverse networks trained on features of the torch edge partition; chosen on validation."""

    name = "blackbox"

    def estimate(self, ctx: AttackContext, done: set[str]) -> list[PartEstimate]:
        return estimate_inversion(
            ctx, torch_attacker_data(ctx), ctx.config.blackbox, self.name, done
        )

    def run(self, ctx: AttackContext) -> Reconstruction:
        inversion = run_inversion(ctx, torch_attacker_data(ctx), ctx.config.blackbox)
        ctx.shared[SHARED_INVERSION] = inversion
        evaluation = evaluation_pairs(ctx, torch_features(ctx.edge, ctx.device))
        recon, info = inversion_result(ctx, inversion, evaluation)
        return Reconstruction(recon, info)
