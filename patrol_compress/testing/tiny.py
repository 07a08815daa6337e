"""Tiny networks with predictable structure for tests.

:func:`tiny_mobilenet` is a MobileNetV2-style CNN (inverted residuals with
depthwise convs) that is *not* a ResNet: it proves that masks, splits, pruning
and export only rely on the ordered-blocks view. It is returned as a plain
module whose forward runs its top-level children in order, so a recipe plugs it
in with ``model.factory: "patrol_compress.testing.tiny:tiny_mobilenet"`` and a
``model.blocks`` list.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class Chain(nn.Module):
    """A module whose forward runs its children in order (like nn.Sequential, named)."""

    def __init__(self, layers: OrderedDict[str, nn.Module]) -> None:
        super().__init__()
        for k, v in layers.items():
            self.add_module(k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x


def tiny_mobilenet(num_classes: int, in_channels: int = 3, width: int = 8) -> Chain:
    """Stem + three stages of inverted residuals; no head (the re-id head is appended)."""
    w = width
    return Chain(
        OrderedDict(
            stem_conv=nn.Conv2d(in_channels, w, 3, 2, 1, bias=False),
            stem_bn=nn.BatchNorm2d(w),
            stem_act=nn.ReLU6(),
            s1=nn.Sequential(InvertedResidual(w, w, 1), InvertedResidual(w, w, 1)),
            s2=nn.Sequential(InvertedResidual(w, 2 * w, 2), InvertedResidual(2 * w, 2 * w, 1)),
            s3=nn.Sequential(InvertedResidual(2 * w, 4 * w, 2)),
        )
    )


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so eval outputs depend on all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
