"""ResNet-18/34/50 with torchvision's parameter names, as BlockNets.

Written here because PyPI's torchvision does not import beside the CPU torch
wheel this project uses. ``width`` scales every stage's channels (tiny test models
use 1/8); ``stem="imagenet"`` is torchvision's 7x7/2 conv + 3x3/2 max-pool, and
``stem="small"`` a 3x3/2 conv with no pooling for 32-64 px inputs, keeping the
names ``conv1``/``bn1``/``maxpool`` (an ``Identity``). A torchvision state dict
loads into the imagenet-stem, width-1 backbone (see :func:`load_torchvision_backbone`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet

StemKind = Literal["imagenet", "small"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs and an identity or 1x1 shortcut."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(width, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


_CONFIGS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def resnet_backbone(
    arch: str,
    width: float = 1.0,
    stem: StemKind = "imagenet",
    last_stride: int = 2,
    in_channels: int = 3,
) -> tuple[OrderedDict[str, nn.Module], list[tuple[str, list[str]]], int]:
    """Layers and block spec of a ResNet without its head, and its output channels."""
    if arch not in _CONFIGS:
        raise ModelError(f"unknown ResNet '{arch}': expected one of {sorted(_CONFIGS)}")
    if width <= 0:
        raise ModelError(f"width must be > 0, found {width}")
    block_cls, depths = _CONFIGS[arch]
    widths = [max(1, round(w * width)) for w in (64, 128, 256, 512)]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if stem == "imagenet":
        layers["conv1"] = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        layers["bn1"] = nn.BatchNorm2d(widths[0])
        layers["relu"] = nn.ReLU(inplace=False)
        layers["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1)
    else:
        layers["conv1"] = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        layers["bn1"] = nn.BatchNorm2d(widths[0])
        layers["relu"] = nn.ReLU(inplace=False)
        layers["maxpool"] = nn.Identity()
    cin = widths[0]
    blocks: list[tuple[str, list[str]]] = [("stem", ["conv1", "bn1", "relu", "maxpool"])]
    for i, (w, depth) in enumerate(zip(widths, depths, strict=True)):
        stride = 1 if i == 0 else (last_stride if i == 3 else 2)
        stage: list[nn.Module] = []
        for j in range(depth):
            stage.append(block_cls(cin, w, stride if j == 0 else 1))
            cin = w * block_cls.expansion
        layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        blocks.append((f"layer{i + 1}", [f"layer{i + 1}"]))
    return layers, blocks, cin


def load_torchvision_backbone(model: BlockNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision ResNet state dict into ``model``'s backbone.

    Keys of torchvision's classifier (``fc.*``) are ignored; every backbone key
    must match by name and shape. Returns the ignored keys.
    """
    own = model.state_dict()
    ignored = [k for k in state if k.startswith("fc.")]
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("head.") and k not in backbone]
    unexpected = [k for k in backbone if k not in own]
    if missing or unexpected:
        raise ModelError(
            f"state dict does not fit this backbone: {len(missing)} missing keys "
            f"(first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    for k, v in backbone.items():
        if own[k].shape != v.shape:
            raise ModelError(
                f"state dict key '{k}' has shape {tuple(v.shape)}, model expects "
                f"{tuple(own[k].shape)}"
            )
    model.load_state_dict(backbone, strict=False)
    return ignored
