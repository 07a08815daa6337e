"""Inversion networks that mirror an edge partition (He et al.'s black-box attacker).

For every edge block, in reverse, the decoder undoes that block: one transposed
conv per factor-2 downsampling (a 3x3 conv where the block keeps the size),
mapping the block's output channels back to its input channels, with BN and
LeakyReLU; a final 3x3 conv and sigmoid give an image in [0, 1]. Channel widths
follow the edge (capped by ``max_width``) so the attacker scales with what it
inverts. Used as PATROL's surrogate (Eq. 8) and by the attack suite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def block_shapes(
    blocks: Sequence[nn.Module], input_shape: Sequence[int]
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """(input C,H,W; output C,H,W) of each block for one image of ``input_shape``."""
    was = [b.training for b in blocks]
    for b in blocks:
        b.eval()
    dev = next(iter(blocks[0].parameters())).device
    h = torch.zeros(1, *input_shape, device=dev)
    out = []
    for b in blocks:
        before = tuple(h.shape[1:])
        h = b(h)
        out.append((before, tuple(h.shape[1:])))
    for b, w in zip(blocks, was, strict=True):
        b.train(w)
    return out  # type: ignore[return-value]


class InversionNet(nn.Module):
    def __init__(
        self,
        shapes: Sequence[tuple[tuple[int, int, int], tuple[int, int, int]]],
        max_width: int = 256,
        refine: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for (cin, hin, _), (cout, hout, _) in reversed(list(shapes)):
            c_src = min(cout, max_width)
            c_dst = min(cin, max_width) if cin > 4 else min(max(32, cout // 2), max_width)
            if not layers and c_src != cout:
                layers += [nn.Conv2d(cout, c_src, 1), nn.BatchNorm2d(c_src), nn.LeakyReLU(0.2)]
            ups = int(round(math.log2(max(hin, 1) / max(hout, 1))))
            c = c_src
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
