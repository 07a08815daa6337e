"""Published CNN designs, tiny, written the way torchvision writes them.

They are here to prove that a user's network is taken *as written*: a
``features`` Sequential, blocks with their own ``forward``, and functional
calls in the top-level forward (``F.relu(self.bn1(...))``,
``F.adaptive_avg_pool2d``, ``torch.flatten``, ``x.view(x.size(0), -1)``), none
of which runs "its top-level children in order". The split is named by a
dotted module path (``"features.6"``) and found by tracing
(:mod:`patrol_compress.models.traced`). Each is a few thousand parameters at
16-32 px, so the tests that prune, export and retrain them take seconds.

* :func:`mobilenet_v2`: inverted residuals with depthwise convolutions and
  ReLU6 (Sandler et al., 2018), torchvision's ``MobileNetV2`` layout;
* :func:`vgg11_bn`: VGG-11 with BatchNorm (configuration "A", no residuals),
  torchvision's ``VGG`` layout with a 1x1 average pool (torchvision's 7x7
  would multiply a tiny classifier's weights by 49);
* :func:`se_resnet`: a ResNet whose basic blocks end in squeeze-and-excitation
  (Hu et al., 2018), the SE block unpacking ``x.size()`` as its authors wrote it;
* :func:`functional_net`: a small CNN written entirely with functional calls,
  a skip connection and ``x.view``, as many users write their first model.

Every factory takes ``num_classes`` and ``in_channels`` (what a recipe's
``model.factory`` is called with) and returns the plain module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------- MobileNetV2


class ConvBNReLU(nn.Sequential):
    """Conv, BatchNorm, ReLU6 (torchvision's ``Conv2dNormActivation``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel=1))
        layers.extend(
            [
                ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        setting: list[tuple[int, int, int, int]] | None = None,
        first: int = 8,
        last: int = 48,
    ) -> None:
        super().__init__()
        setting = setting or [(1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2), (4, 24, 1, 1)]
        features: list[nn.Module] = [ConvBNReLU(in_channels, first, stride=2)]
        channels = first
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        features.append(ConvBNReLU(channels, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """Stem, 7 inverted residuals (depthwise 3x3, ReLU6), 1x1 conv; split e.g. at "features.6"."""
    return MobileNetV2(num_classes, in_channels)


# ------------------------------------------------------------------------ VGG-11 BN

VGG11: list[int | str] = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
"""Configuration "A" at 1/16 of the width."""


def make_layers(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            assert isinstance(v, int)
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            nn.Linear(32, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm; split e.g. at "features.14" (after the third pooling)."""
    return VGG(make_layers(VGG11, in_channels), num_classes)


# --------------------------------------------------------------------------- SE-ResNet


class SELayer(nn.Module):
    def __init__(self, channel: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEBasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SELayer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


class SEResNet(nn.Module):
    def __init__(
        self,
        layers: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (8, 16, 32),
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)  # a small-image stem
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2] * SEBasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [SEBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [SEBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


def se_resnet(num_classes: int = 10, in_channels: int = 3) -> SEResNet:
    """SE-ResNet with one SE basic block per stage; split e.g. at "layer2"."""
    return SEResNet([1, 1, 1], num_classes, in_channels)


# ------------------------------------------------------------------ functional CNN


class FunctionalNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.conv4 = nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))  # a skip connection: no cut inside it
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def functional_net(num_classes: int = 10, in_channels: int = 3) -> FunctionalNet:
    """Functional calls, a skip connection and ``x.view``; split e.g. at "bn3" (not "bn2")."""
    return FunctionalNet(num_classes, in_channels)


DESIGNS = {
    "mobilenet_v2": ("features.6", mobilenet_v2),
    "vgg11_bn": ("features.14", vgg11_bn),
    "se_resnet": ("layer2", se_resnet),
    "functional_net": ("bn3", functional_net),
}
"""Each design's factory and a split that is a cut point of its forward."""
