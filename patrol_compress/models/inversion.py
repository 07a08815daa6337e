"""Inversion networks that mirror an edge partition (He et al.'s black-box attacker).

For every edge block, in reverse, the decoder undoes that block: one transposed
conv per factor-2 downsampling (a 3x3 conv where the block keeps the size),
mapping the block's output channels back to its input channels, with BN and
LeakyReLU; a final 3x3 conv and sigmoid give an image in [0, 1]. Channel widths
follow the edge (capped by ``max_width``) so the attacker scales with what it
inverts. Used as PATROL's surrogate (Eq. 8) and by the attack suite, which
raises ``refine`` (3x3 convs per block, more depth to undo a deep stage) and
``min_width`` (the width of layers that map back to the few image channels, so
the last layers are not a bottleneck) to make a stronger attacker than the
cheap in-training surrogate. The shapes it mirrors come from
:func:`patrol_compress.models.split.edge_shapes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class InversionNet(nn.Module):
    def __init__(
        self,
        shapes: Sequence[tuple[tuple[int, int, int], tuple[int, int, int]]],
        max_width: int = 256,
        refine: int = 1,
        min_width: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        blocks = list(shapes)
        c = blocks[-1][1][0]  # the edge's output channels: what the decoder receives
        if c > max_width:
            layers += [nn.Conv2d(c, max_width, 1), nn.BatchNorm2d(max_width), nn.LeakyReLU(0.2)]
            c = max_width
        for i, ((cin, hin, _), (cout, hout, _)) in enumerate(reversed(blocks)):
            # Each block is undone towards its input's width; a pruned stage may
            # have only a few channels, so widths never drop below min_width, and
            # the block reading the image maps to min_width (or cout/2) instead.
            toward = max(min_width, cout // 2) if i == len(blocks) - 1 else max(cin, min_width)
            c_dst = min(toward, max_width)
            ups = int(round(math.log2(max(hin, 1) / max(hout, 1))))
            for _ in range(max(ups, 0)):
                layers += [
                    nn.ConvTranspose2d(c, c_dst, 4, stride=2, padding=1),
                    nn.BatchNorm2d(c_dst),
                    nn.LeakyReLU(0.2),
                ]
                c = c_dst
            for _ in range(refine if ups > 0 else refine + 1):
                layers += [
                    nn.Conv2d(c, c_dst, 3, padding=1),
                    nn.BatchNorm2d(c_dst),
                    nn.LeakyReLU(0.2),
                ]
                c = c_dst
        image_channels = shapes[0][0][0]
        layers += [nn.Conv2d(c, image_channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def reconstruction_l2(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 8: the L2 norm of the reconstruction error, per image, averaged over the batch."""
    return (x - x_hat).flatten(1).norm(dim=1).mean()
