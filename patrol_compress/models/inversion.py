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

Speed: PATROL's surrogate runs forward and backward in every training step and
would cost more than the ResNet edge it inverts. Everything below computes the
same function, only faster (on CPU; ``tests/test_training_speed_equivalence.py``
checks each against the plain computation):

* transposed convolutions are :class:`ConvTranspose2d`, whose weight gradient
  on CPU is taken as the weight gradient of the convolution it is the adjoint
  of (oneDNN's own transposed-convolution weight gradient is ~4x slower in
  channels-last);
* LeakyReLUs run in place (they follow a BN or a convolution, whose backward
  does not need their output);
* :func:`frozen_inverter` gives the fixed attacker of a PATROL epoch: BNs
  folded into the convolutions, no weight gradients, and on CPU the batch is
  run in slices so that no full-resolution activation exceeds
  ``FrozenInverter.slice_bytes`` (glibc returns blocks over 32 MB to the
  system on every free, and re-faulting their pages cost more than the
  arithmetic of the layers around them);
* PATROL keeps the surrogate in channels-last memory format on CPU, where
  oneDNN runs these few-channel, full-resolution layers about twice as fast as
  in NCHW.

Measured in ``benchmarks/training_overhead.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _ConvTranspose2dFn(torch.autograd.Function):
    """``conv_transpose2d`` (groups 1) whose weight gradient is computed as a convolution's.

    For ``y = conv_transpose2d(x, W)``, ``dL/dW`` equals the weight gradient of
    ``conv2d(dL/dy, W)`` (the convolution from y-space back to x-space that the
    transposed one is the adjoint of) with ``x`` as its output gradient: the
    same sum over the same products, which oneDNN computes ~4x faster in
    channels-last than its transposed-convolution weight gradient.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conf: tuple[list[int], list[int], list[int], list[int]],
    ) -> torch.Tensor:
        stride, padding, output_padding, dilation = conf
        ctx.save_for_backward(x, weight)
        ctx.conf = conf  # type: ignore[attr-defined]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, output_padding, dilation = ctx.conf  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        backward = torch.ops.aten.convolution_backward
        gx = gw = gb = None
        if need[0]:
            gx = backward(
                grad, x, weight, None, stride, padding, dilation, True, output_padding, 1,
                [True, False, False],
            )[0]  # fmt: skip
        if need[1]:
            gw = backward(
                x, grad, weight, None, stride, padding, dilation, False, [0, 0], 1,
                [False, True, False],
            )[1]  # fmt: skip
        if ctx.has_bias and need[2]:  # type: ignore[attr-defined]
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters and state dict) with a faster CPU weight gradient.

    See :class:`_ConvTranspose2dFn`; used when the weight needs a gradient on
    CPU (groups 1, zero padding), the plain module otherwise.
    """

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            output_size is not None
            or self.groups != 1
            or self.padding_mode != "zeros"
            or input.dim() != 4
            or input.device.type != "cpu"
            or not (torch.is_grad_enabled() and self.weight.requires_grad)
        ):
            return super().forward(input, output_size)
        conf = (
            list(self.stride),
            list(self.padding),  # ints: padding_mode is zeros
            list(self.output_padding),
            list(self.dilation),
        )
        out: torch.Tensor = _ConvTranspose2dFn.apply(input, self.weight, self.bias, conf)
        return out


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
            layers += [
                nn.Conv2d(c, max_width, 1),
                nn.BatchNorm2d(max_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
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
                    ConvTranspose2d(c, c_dst, 4, stride=2, padding=1),
                    nn.BatchNorm2d(c_dst),
                    nn.LeakyReLU(0.2, inplace=True),
                ]
                c = c_dst
            for _ in range(refine if ups > 0 else refine + 1):
                layers += [
                    nn.Conv2d(c, c_dst, 3, padding=1),
                    nn.BatchNorm2d(c_dst),
                    nn.LeakyReLU(0.2, inplace=True),
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


class FrozenInverter(nn.Module):
    """A fixed inverter run on slices of the batch (CPU); see :func:`frozen_inverter`.

    Only valid for a network without cross-sample terms (eval-mode BatchNorms
    with running statistics): each slice then computes exactly the rows the
    whole batch would.
    """

    slice_bytes: int = 8 << 20
    """Largest activation of one slice, in bytes (CPU)."""

    def __init__(self, net: nn.Module, sliceable: bool = True) -> None:
        super().__init__()
        self.net = net
        self.sliceable = sliceable
        self._rows: dict[tuple[int, ...], int] = {}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.sliceable or z.device.type != "cpu" or len(z) < 2:
            return self.net(z)
        key = tuple(z.shape[1:])
        if key not in self._rows:
            self._rows[key] = max(1, self.slice_bytes // max(self._largest_activation(z[:1]), 1))
        rows = self._rows[key]
        if rows >= len(z):
            return self.net(z)
        return torch.cat([self.net(part) for part in z.split(rows)])

    @torch.no_grad()
    def _largest_activation(self, one: torch.Tensor) -> int:
        """Bytes of the largest output any submodule produces for one input row."""
        sizes: list[int] = [one.numel() * one.element_size()]

        def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: object) -> None:
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in self.net.modules()]
        try:
            self.net(one.detach())
        finally:
            for h in handles:
                h.remove()
        return max(sizes)


@torch.no_grad()
def frozen_inverter(net: nn.Module) -> FrozenInverter:
    """An eval-mode copy of ``net`` with frozen weights: the same function, computed faster.

    For the attacker a PATROL epoch holds fixed (Eq. 9's ``-beta * L_adv`` needs
    gradients with respect to the features only). Every BatchNorm that follows a
    (transposed) convolution and normalises with running statistics is folded
    into it (``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma /
    sqrt(var + eps)``, exact up to float rounding), LeakyReLUs run in place and
    no parameter requires a gradient. On CPU the batch runs in slices whose
    largest activation stays under :attr:`FrozenInverter.slice_bytes` (unless a
    BatchNorm without running statistics couples the samples). ``net`` itself is
    untouched; its memory format is kept. Outputs and input gradients match
    ``net.eval()`` to float tolerance (``tests/test_training_speed_equivalence.py``).
    """
    out = copy.deepcopy(net).eval().requires_grad_(False)
    for seq in [m for m in out.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        kept: list[nn.Module] = []
        for layer in layers:
            prev = kept[-1] if kept else None
            if (
                isinstance(layer, nn.modules.batchnorm._BatchNorm)
                and isinstance(prev, (nn.Conv2d, nn.ConvTranspose2d))
                and prev.groups == 1
                and layer.running_mean is not None
                and layer.running_var is not None
            ):
                _fold_bn(prev, layer)
                continue
            if isinstance(layer, nn.LeakyReLU):
                layer.inplace = True
            kept.append(layer)
        if len(kept) != len(layers):
            seq._modules.clear()  # indices change: rebuild in order
            for i, layer in enumerate(kept):
                seq.add_module(str(i), layer)
    coupled = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
        for m in out.modules()
    )
    return FrozenInverter(out, sliceable=not coupled)


def _fold_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold eval-mode ``bn`` into the convolution before it (in place)."""
    var = bn.running_var
    mean = bn.running_mean
    assert var is not None and mean is not None
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    # Output channels are dim 0 of a Conv2d weight and dim 1 of a ConvTranspose2d's.
    view = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    conv.weight.mul_(scale.view(view))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
