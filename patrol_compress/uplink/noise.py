"""Where a noisy uplink's noise comes from once the edge is exported: the deployer, not the graph.

A noisy uplink (``patrol.uplink.noise``) bounds what crosses the split only if
the receiver cannot predict the noise. ONNX has random operators
(``RandomNormalLike``), but onnxruntime's CPU kernels draw them from
``std::default_random_engine`` (a 31-bit linear congruential generator in
libstdc++) seeded from the clock when the model gives no seed, and from the
model file's own ``seed`` attribute when it does: a cloud that knows the edge
model could search the 2**31 generator states, or read the seed, and subtract
the noise. So the exported edge takes the noise as a second input,
:data:`~patrol_compress.contracts.NOISE_INPUT` (standard normal, the shape of
the codes it sends); the graph scales it by ``noise`` steps, adds it before the
rounding, and is otherwise deterministic, so export parity stays exact (torch
and the runtime fed the same image and the same noise send the same codes).

The deployer draws the noise afresh for every image from the operating
system's cryptographic source: :func:`~patrol_compress.edge_noise.draw_noise`
(torch-free, like everything an edge device runs). Feeding zeros, or reusing a
draw, voids the bound the manifest states; the manifest says so.
"""

from __future__ import annotations

import torch
from torch import nn

from patrol_compress.edge_noise import draw_noise
from patrol_compress.uplink.quant import UplinkQuant, find_uplink

__all__ = ["NoisyEdge", "draw_noise", "given_noise_features", "noisy_uplink"]


class NoisyEdge(nn.Module):
    """An exported noisy edge: ``(image, noise) -> codes``, the noise given, not drawn.

    Runs the edge up to its quantizer (which is the edge's last module, see
    :mod:`patrol_compress.uplink.insert`) and codes the features with the
    given standard normal ``noise`` (module docstring). ``edge`` is the export's
    own copy: its quantizer is switched to pass features through.
    """

    def __init__(self, edge: nn.Module, quant: UplinkQuant) -> None:
        super().__init__()
        quant.emit_codes()  # freezes the range's sign, as a noiseless export does
        quant.emit = "bypass"
        self.edge = edge
        self.quant = quant

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Codes for ``x`` with the draw ``noise``; None draws it from torch's generator, as
        the run's edge does (what the manifest's cost counters call with one image).

        The draw is concatenated with the features along the channels and split off
        again, so the exported graph holds a ``Concat``, which takes no broadcasting: a
        draw of another batch (one image's noise for a batch, a batch of draws for one
        image) fails in the runtime instead of reusing one draw across images, or
        sending noisy copies of one image whose mean removes the noise. A ``Reshape``
        to the features' shape did not hold: onnxruntime's optimizer removed it
        (measured: one image's draw was broadcast over 16 images without an error).
        """
        features = self.edge(x)
        if noise is not None:
            channels = features.shape[1]
            both = torch.cat([features, noise.to(features.dtype)], dim=1)
            features, noise = both[:, :channels], both[:, channels:]
        return self.quant.codes(features, noise)


def noisy_uplink(edge: nn.Module) -> bool:
    """Whether ``edge`` ends in an uplink that adds noise before rounding."""
    quant = find_uplink(edge)
    return quant is not None and bool(quant.noise)


@torch.no_grad()
def given_noise_features(edge: nn.Module, x: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """What the torch ``edge`` (ending in a noisy uplink) sends for images ``x`` when its draw
    is ``normal``, decoded as the cloud decodes it: the reference a noisy export's outputs are
    compared with (a fresh draw on each side would differ however faithful the export).

    Runs a :class:`NoisyEdge` over a CPU copy of ``edge``, so the caller's edge, its device
    and its quantizer's mode stay as they were.
    """
    import copy

    mine = copy.deepcopy(edge).cpu().eval()
    quant = find_uplink(mine)
    if quant is None or not quant.noise:
        raise ValueError("given_noise_features needs an edge that ends in a noisy uplink")
    codes = NoisyEdge(mine, quant)(x.cpu(), normal.cpu())
    return quant.decoder()(codes)
