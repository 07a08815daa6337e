"""The quantized uplink: what crosses the split is b-bit codes, with a learned range per channel.

The cloud can learn only what the uplink carries, and C x H x W values of b
bits carry at most b*C*H*W bits per image: a hard bound on what any attacker,
present or future, can learn from one image. :class:`UplinkQuant` sits at
the end of the edge (the last child of the split stage) and rounds every
crossing value to one of ``2**bits`` levels of its channel's range
``[lo, hi]``:

* **Training** (mask fine-tuning and recovery): fake quantization. Values
  are clipped to the range and rounded, the rounding passes gradients
  straight through (STE), and the range is learned as LSQ and PACT learn it:
  ``hi`` (and ``lo`` for signed features) get the gradient of the clip and of
  the step size, so the edge and the range adapt to the rounding together.
  The range starts at the per-channel ``init_quantile`` of the first training
  batch (the 0 lower end when the features are non-negative, as after ReLU).
* **Export**: the edge ends in :meth:`UplinkQuant.codes` (clip, scale, round,
  cast to uint8: plain ONNX ``Div``/``Round``/``Clip``/``Cast`` ops, which
  onnxruntime and OpenVINO both run, rather than ``QuantizeLinear``, whose
  per-channel, sub-byte use the runtimes do not share); the cloud starts with
  :class:`UplinkDecode` (cast to float, ``code * step + lo``). Sub-byte codes
  are packed for transmission by :mod:`patrol_compress.uplink.pack`.

**Noise** (``noise`` > 0, off by default): Gaussian noise of ``noise``
quantization steps is added to every clipped value before it is rounded,
in training, in torch inference and in the codes, so the edge sends a noisy
code and the noise is part of the channel, not only a regulariser. An
exported edge takes the standard normal draw as an input instead of drawing
it (:mod:`patrol_compress.uplink.noise`). Why:
rounding alone bounds what crosses at ``bits`` per value; noise bounds it
below that (:func:`~patrol_compress.uplink.entropy.capacity_bits`), and
the edge learns, through the straight-through rounding, to keep the task's
signal above it. In torch the noise comes from torch's global generator, so a
seeded run repeats.

A pruned crossing channel takes its range entries with it:
:class:`UplinkPruner` registers the module with torch-pruning's dependency
graph like a BatchNorm, so the uplink narrows with the split stage's stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

MIN_RANGE = 1e-6
"""The smallest range a channel may learn (a zero range would divide by zero)."""


class UplinkQuant(nn.Module):
    """Per-channel ``bits``-bit fake quantization of the edge output (module docstring).

    ``lo`` only learns for signed features (``signed``, set by calibration);
    for non-negative ones it stays 0 and receives no gradient.
    """

    signed: torch.Tensor
    initialised: torch.Tensor

    def __init__(
        self, channels: int, bits: int, init_quantile: float = 0.999, noise: float = 0.0
    ) -> None:
        super().__init__()
        self.bits = int(bits)
        self.init_quantile = float(init_quantile)
        self.noise = float(noise)
        """Standard deviation of the Gaussian noise added before rounding, in steps (0: none)."""
        self.hi = nn.Parameter(torch.ones(channels))
        self.lo = nn.Parameter(torch.zeros(channels))
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("initialised", torch.tensor(False))
        self.emit = "fake"
        """``fake`` (dequantized floats, training and torch inference), ``codes`` (uint8, the
        exported edge) or ``bypass`` (the unquantized features, to calibrate on)."""
        self._frozen_signed: bool | None = None

    def emit_codes(self) -> None:
        """From now on send the uint8 codes (an export's copy of the edge); the range's sign is
        read once here, so a traced export holds no data-dependent branch."""
        self._frozen_signed = bool(self.signed)
        self.emit = "codes"

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    def extra_repr(self) -> str:
        noise = f", noise={self.noise:g}" if self.noise else ""
        return f"channels={self.hi.numel()}, bits={self.bits}{noise}"

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set the range from features ``x`` (N x C x H x W): per-channel quantiles."""
        per_channel = x.detach().transpose(0, 1).flatten(1).float()
        hi = torch.quantile(per_channel, self.init_quantile, dim=1)
        low = torch.quantile(per_channel, 1.0 - self.init_quantile, dim=1)
        signed = bool((per_channel.min(dim=1).values < 0).any())
        lo = low if signed else torch.zeros_like(low)
        self.hi.copy_(torch.maximum(hi, lo + MIN_RANGE))
        self.lo.copy_(lo)
        self.signed.fill_(signed)
        self.initialised.fill_(True)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per channel, shaped 1 x C x 1 x 1, hi at least MIN_RANGE above lo."""
        signed = self._frozen_signed if self._frozen_signed is not None else bool(self.signed)
        lo = self.lo if signed else self.lo.detach()
        hi = torch.maximum(self.hi, lo.detach() + MIN_RANGE)
        return lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.emit == "bypass":
            return x
        if self.emit == "codes":
            return self.codes(x)
        if self.training and not bool(self.initialised):
            self.calibrate(x)  # the first training batch, when nobody calibrated before
        scaled, step, lo = self._in_steps(x)
        rounded = scaled + (torch.round(scaled) - scaled).detach()  # straight-through
        return rounded * step + lo

    def _in_steps(
        self, x: torch.Tensor, normal: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(clip(x) - lo) / step`` plus the noise (clipped back to the levels), the step and
        ``lo``: what training's fake quantizer and the exported codes both round. ``normal``
        is the standard normal draw to scale by ``noise`` (an export's noise input, see
        :mod:`patrol_compress.uplink.noise`); None draws it from torch's generator."""
        lo, hi = self.bounds()
        step = (hi - lo) / self.levels
        scaled = (torch.minimum(torch.maximum(x, lo), hi) - lo) / step
        if self.noise:
            draw = torch.randn_like(scaled) if normal is None else normal
            if draw.dtype != scaled.dtype:  # checked here, so a traced fp32 edge holds no Cast
                draw = draw.to(scaled.dtype)
            scaled = (scaled + self.noise * draw).clamp(0.0, float(self.levels))
        return scaled, step, lo

    def codes(self, x: torch.Tensor, normal: torch.Tensor | None = None) -> torch.Tensor:
        """The uint8 codes the edge sends: ``round((clip(x) - lo) / step)`` (plus the noise,
        ``noise`` times ``normal`` when given)."""
        scaled, _, _ = self._in_steps(x, normal)
        return torch.round(scaled).clamp(0, self.levels).to(torch.uint8)

    def decoder(self) -> UplinkDecode:
        """The cloud's first step: codes back to the values the fake quantizer produced."""
        lo, hi = self.bounds()
        return UplinkDecode((hi - lo).detach() / self.levels, lo.detach())


class UplinkDecode(nn.Module):
    """``code * step + lo`` per channel: what the cloud does with the received codes."""

    step: torch.Tensor
    lo: torch.Tensor

    def __init__(self, step: torch.Tensor, lo: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("step", step.detach().clone().float())
        self.register_buffer("lo", lo.detach().clone().float())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(self.step.dtype) * self.step + self.lo


def find_uplink(model: nn.Module) -> UplinkQuant | None:
    """The model's uplink quantizer, if it has one."""
    for m in model.modules():
        if isinstance(m, UplinkQuant):
            return m
    return None


def silence_noise(model: nn.Module) -> nn.Module:
    """Switch off a noisy uplink's noise in ``model`` (in place; returns it).

    For checks that compare two computations of one function on fixed inputs
    (removal's equivalence check): the noise is drawn, not computed, so two
    calls differ by the draw however faithful the function is.
    """
    for m in model.modules():
        if isinstance(m, UplinkQuant):
            m.noise = 0.0
    return model


class UplinkPruner(tp.pruner.function.BasePruningFunc):
    """Prunes an UplinkQuant's per-channel range on in- and out-channel calls, like a BN."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if not isinstance(layer, UplinkQuant):
            raise TypeError(f"UplinkPruner got a {type(layer).__name__}")
        drop = {int(i) for i in idxs}
        keep = [i for i in range(layer.hi.numel()) if i not in drop]
        for name in ("hi", "lo"):
            p = getattr(layer, name)
            setattr(layer, name, nn.Parameter(p.data[keep].clone(), requires_grad=p.requires_grad))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        if not isinstance(layer, UplinkQuant):
            raise TypeError(f"UplinkPruner got a {type(layer).__name__}")
        return int(layer.hi.numel())

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)
