"""Decoder families of the learned inversion attacks, and the strength they are built with.

A privacy number is only as good as the strongest attack behind it. The
first attacker this project had mirrored the edge block by block with
channel widths that *followed the edge*, so every channel PATROL removed
also shrank the attacker: a pruned edge looked private partly because its
attacker had become small (an outside attacker with a fixed-width decoder
beat it by up to 5.6 dB PSNR on a pruned Fashion-MNIST edge). The suite
therefore trains several families and reports the strongest:

* ``mirror``: :class:`~patrol_compress.models.inversion.InversionNet`, He et
  al.'s decoder that undoes the edge block by block (the paper's attacker).
* ``upsample``: a generic decoder whose capacity is set only by the attack
  config and the feature map's resolution: a projection to ``base_width``
  channels, then one upsampling stage (nearest x2, two 3x3 convs) per factor
  two, halving the width per stage down to ``min_width``.
* ``lift``: for tiny maps (side <= ``lift_max_side``, e.g. the 2x2 output of
  ResNet-18's last stage at 32-64 px), a learned linear lift of the flattened
  features into a ``base_width`` x ``lift_side`` x ``lift_side`` map, then the
  same upsampling stages. A 2x2 map has too few positions for convolutions to
  spread the information over the image; a dense layer has no such limit.

Every family reads the features through :class:`Standardize` (per-channel
mean and standard deviation of the attacker's own training features). A
defense that merely rescales features (a Lipschitz penalty shrinks them) then
does not starve the decoder's optimiser, and constant channels (a
pruned-to-zero channel kept in place) are dropped, so the ``upsample`` and
``lift`` decoders are the same networks whether a pruned edge is stored
narrow or zero-padded back to its original widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from patrol_compress.attacks.base import Shapes
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.models.inversion import InversionNet
from patrol_compress.registry import Registry

DEAD_CHANNEL_RTOL = 1e-6
"""A channel whose std is below this fraction of the largest std is treated as
constant (float rounding, not information) and dropped."""


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder family may depend on: shapes and feature statistics, never weights."""

    shapes: Shapes
    """(input, output) C x H x W of each edge stage block (the mirror family needs them)."""
    feature_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    mean: torch.Tensor
    """Per-channel mean of the attacker's training features (C)."""
    std: torch.Tensor
    """Per-channel standard deviation of the attacker's training features (C)."""

    @property
    def live(self) -> int:
        """How many feature channels vary (the decoders' real input width)."""
        return len(live_channels(self.std))


def live_channels(std: torch.Tensor) -> torch.Tensor:
    """Indices of the channels that vary over the attacker's features."""
    std = std.float()
    keep = torch.nonzero(std > DEAD_CHANNEL_RTOL * float(std.max().clamp_min(1e-30))).flatten()
    # Features that never vary carry nothing; one (zeroed) channel keeps the
    # decoders well-formed, and they learn the attacker data's mean image.
    return keep if len(keep) else torch.zeros(1, dtype=torch.long)


class Standardize(nn.Module):
    """Keep the varying channels and scale them to ``(z - mean) / std``.

    Dropping constant channels (rather than scaling them by 0) makes the
    decoders after it identical, weight for weight, whether a pruned edge is
    stored narrow or zero-padded to its original widths: a constant channel
    carries no information, and a first layer sized by the padded width
    would get a different initialisation for the same function.
    """

    keep: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        keep = live_channels(std)
        self.register_buffer("keep", keep)
        self.register_buffer("mean", mean.float()[keep].view(1, -1, 1, 1))
        kept = std.float()[keep]
        scale = torch.where(kept > 0, 1.0 / kept.clamp_min(1e-30), torch.zeros_like(kept))
        self.register_buffer("scale", scale.view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z.index_select(1, self.keep) - self.mean) * self.scale


def _conv_bn(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]


def upsampling_stages(
    width: int, side: tuple[int, int], image_shape: tuple[int, int, int], min_width: int
) -> list[nn.Module]:
    """From a ``width`` x ``side`` map to an image: x2 stages, halving widths, sigmoid output."""
    channels, height, w_img = image_shape
    ups = max(0, math.ceil(math.log2(max(height / side[0], w_img / side[1], 1.0))))
    layers: list[nn.Module] = []
    for _ in range(ups):
        nxt = max(min_width, width // 2)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn(width, nxt)]
        layers += _conv_bn(nxt, nxt)
        width = nxt
    if (side[0] << ups, side[1] << ups) != (height, w_img):
        layers.append(nn.Upsample(size=(height, w_img), mode="bilinear", align_corners=False))
    layers += [nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid()]
    return layers


Builder = Callable[[DecoderSpec, BlackboxConfig], nn.Module | None]
FAMILIES: Registry[Builder] = Registry("decoder family")
"""Decoder families by name; a builder returns None where the family does not apply."""


@FAMILIES.register("mirror")
def mirror(spec: DecoderSpec, cfg: BlackboxConfig) -> nn.Module:
    (cin, out) = spec.shapes[-1]
    shapes = [*spec.shapes[:-1], (cin, (spec.live, out[1], out[2]))]
    net = InversionNet(shapes, max_width=cfg.max_width, refine=cfg.refine, min_width=cfg.min_width)
    return nn.Sequential(Standardize(spec.mean, spec.std), net)


@FAMILIES.register("upsample")
def upsample(spec: DecoderSpec, cfg: BlackboxConfig) -> nn.Module:
    _, h, w = spec.feature_shape
    c = spec.live
    layers: list[nn.Module] = [Standardize(spec.mean, spec.std)]
    layers += _conv_bn(c, cfg.base_width, 1) + _conv_bn(cfg.base_width, cfg.base_width)
    layers += upsampling_stages(cfg.base_width, (h, w), spec.image_shape, cfg.min_width)
    return nn.Sequential(*layers)


@FAMILIES.register("lift")
def lift(spec: DecoderSpec, cfg: BlackboxConfig) -> nn.Module | None:
    _, h, w = spec.feature_shape
    c = spec.live
    if max(h, w) > cfg.lift_max_side:
        return None
    side = min(cfg.lift_side, spec.image_shape[1], spec.image_shape[2])
    width = cfg.base_width
    layers: list[nn.Module] = [
        Standardize(spec.mean, spec.std),
        nn.Flatten(),
        nn.Linear(c * h * w, width * side * side),
        nn.Unflatten(1, (width, side, side)),
        nn.BatchNorm2d(width),
        nn.LeakyReLU(0.2),
        *_conv_bn(width, width),
    ]
    layers += upsampling_stages(width, (side, side), spec.image_shape, cfg.min_width)
    return nn.Sequential(*layers)


def build_decoders(spec: DecoderSpec, cfg: BlackboxConfig) -> dict[str, nn.Module]:
    """The configured families that apply to this feature map, by name."""
    out: dict[str, nn.Module] = {}
    for name in cfg.families:
        net = FAMILIES.get(name)(spec, cfg)
        if net is not None:
            out[name] = net
    return out
