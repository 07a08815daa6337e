"""The informed attack: the black-box attacker, also told what the cloud computed.

The attacker of a split deployment is usually the cloud itself. Besides the
codes that cross the uplink it holds its own output for them: the logits of
a classifier (so the predicted class), the embedding of a re-identification
model. In principle that adds nothing: the output is a function of the
codes the attacker already has. In practice a decoder of limited size may
not learn that function from the attacker's images, while the cloud hands it
over for free; for an edge whose codes carry little more than the class, the
class may be most of what a decoder can use. An attack that ignores it can
fail (read below the label-only floor) where a better-informed one would
not, and a failed attack measures the attacker, not the edge.

So this attack trains the black-box attacker's decoders on the received
codes with the cloud partition's output appended as extra channels, each
output value broadcast over the feature map's positions. The cloud output is
computed from *the same* codes the decoder reads: for an edge that adds
noise before its uplink (``patrol.uplink.noise``) the draw the cloud saw is
the draw the decoder reads, as on a deployed device. Strength, data, seed,
families and attacker-side choices are the ``blackbox`` section's, so the
difference between the two attacks on a point is the cloud's output alone;
the decoders' per-channel standardisation puts logits and codes on one
scale. Validation PSNR on the attacker's own images is comparable with the
black-box attack's (same images), which lets the suite choose the stronger.
"""

from __future__ import annotations

import torch

from patrol_compress.attacks.base import (
    ATTACKS,
    FEATURE_BATCH,
    Attack,
    AttackContext,
    AttackError,
    FeatureFn,
    Reconstruction,
)
from patrol_compress.attacks.blackbox import (
    estimate_inversion,
    evaluation_pairs,
    inversion_result,
    run_inversion,
)
from patrol_compress.attacks.fit import AttackerData, attacker_pairs
from patrol_compress.attacks.progress import PartEstimate
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import split as split_model

SHARED_DATA = "informed_attacker_data"
"""Key in :attr:`AttackContext.shared` of the informed attack's :class:`AttackerData`."""


def with_cloud_output(codes: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``codes`` (N x C x H x W) with ``output`` (N x D, or N x ...) appended as D channels,
    each value repeated over the H x W positions."""
    flat = output.reshape(len(output), -1).to(codes.dtype)
    h, w = codes.shape[2], codes.shape[3]
    return torch.cat([codes, flat[:, :, None, None].expand(-1, -1, h, w)], dim=1)


def informed_features(model: BlockNet, split: int, device: torch.device) -> FeatureFn:
    """Images -> received codes plus the cloud's output on those codes (module docstring)."""
    edge, cloud = split_model(model, split)
    if not list(cloud.children()):
        raise AttackError(
            f"split {split} leaves nothing on the cloud; the informed attack needs "
            "its output (attack an earlier split)"
        )

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), FEATURE_BATCH):
            codes = edge(x[i : i + FEATURE_BATCH].to(device))
            out.append(with_cloud_output(codes, cloud(codes)).cpu())
        return torch.cat(out)

    return features


def informed_attacker_data(ctx: AttackContext) -> AttackerData:
    """The attacker's pairs with informed features, built once per attack."""
    if SHARED_DATA not in ctx.shared:
        ctx.shared[SHARED_DATA] = attacker_pairs(
            ctx.attacker_data,
            informed_features(ctx.model, ctx.split, ctx.device),
            ctx.config.blackbox,
            ctx.config.seed,
        )
    data: AttackerData = ctx.shared[SHARED_DATA]
    return data


@ATTACKS.register("informed")
class InformedAttack(Attack):
    """The black-box attack's decoders, reading the codes and the cloud's output on them."""

    name = "informed"

    def estimate(self, ctx: AttackContext, done: set[str]) -> list[PartEstimate]:
        return estimate_inversion(
            ctx, informed_attacker_data(ctx), ctx.config.blackbox, self.name, done
        )

    def run(self, ctx: AttackContext) -> Reconstruction:
        inversion = run_inversion(ctx, informed_attacker_data(ctx), ctx.config.blackbox, self.name)
        evaluation = evaluation_pairs(ctx, informed_features(ctx.model, ctx.split, ctx.device))
        recon, info = inversion_result(ctx, inversion, evaluation)
        probe = ctx.eval_images[:1]
        with torch.no_grad():
            codes = int(ctx.edge(probe.to(ctx.device)).shape[1])
        info["code_channels"] = codes
        info["cloud_output_channels"] = int(evaluation.features(probe).shape[1]) - codes
        info["informed_by"] = "the cloud partition's output on the received codes"
        return Reconstruction(recon, info)
