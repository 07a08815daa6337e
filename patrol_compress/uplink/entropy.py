"""How much an uplink carries: the hard bound and an empirical entropy estimate.

``bound_bits = bits * C * H * W`` per image is exact: no attacker learns more
from one image than the bits it sends. The empirical entropy is an
*estimate* of how many of them the codes actually use on given images: the
sum over code positions of each position's empirical entropy across the
images (the entropy of its histogram). A sum of marginal entropies bounds
the joint entropy from above, but a histogram from N images also
underestimates each marginal when ``2**bits`` is not small against N: the
number is labelled an estimate everywhere it is shown.

With noise before the rounding (``patrol.uplink.noise``), a tighter bound
holds: :func:`capacity_bits`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def bound_bits(shape: tuple[int, int, int], bits: int) -> int:
    """``bits * C * H * W``: the most one image's uplink can carry."""
    c, h, w = shape
    return int(bits * c * h * w)


def capacity_bits(shape: tuple[int, int, int], bits: int, noise: float) -> float:
    """What a noisy uplink carries per image: ``C*H*W * min(bits, 0.5*log2(1 + L**2/(4 s**2)))``.

    Why it holds: in units of the step, each value the edge emits lies in
    ``[0, L]`` (``L = 2**bits - 1`` levels), so its variance is at most
    ``L**2 / 4``; independent Gaussian noise of ``s`` steps is added to it, and
    among inputs of a given variance a Gaussian one maximises the mutual
    information, which is then ``0.5*log2(1 + var / s**2)`` bits (Shannon's
    AWGN capacity). Clipping and rounding afterwards only process the noisy
    value, so they cannot add information (data processing), and noise drawn
    independently per value makes the per-image information at most the sum
    over values (a memoryless channel). ``bits`` per value stays a bound too.
    """
    c, h, w = shape
    if noise <= 0:
        return float(bound_bits(shape, bits))
    levels = 2**bits - 1
    per_value = min(float(bits), 0.5 * math.log2(1.0 + levels**2 / (4.0 * noise**2)))
    return c * h * w * per_value


def empirical_entropy_bits(codes: np.ndarray) -> float:
    """Sum over positions of the empirical entropy (bits) of ``codes`` (N x ...) across N."""
    flat = np.asarray(codes).reshape(len(codes), -1)
    total = 0.0
    for column in flat.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        total += float(-(p * np.log2(p)).sum())
    return total


def uplink_report(codes: np.ndarray, bits: int, noise: float = 0.0) -> dict[str, Any]:
    """The bound and the entropy estimate of a quantized uplink on ``codes`` (N x C x H x W);
    with ``noise``, also the noisy channel's capacity (:func:`capacity_bits`)."""
    shape = tuple(int(d) for d in codes.shape[1:])
    if len(shape) != 3:
        raise ValueError(f"expected N x C x H x W codes, found {list(codes.shape)}")
    c, h, w = shape
    report: dict[str, Any] = {
        "bits": bits,
        "shape": [c, h, w],
        "uplink_bits_max": bound_bits((c, h, w), bits),
        "empirical_entropy_bits": round(empirical_entropy_bits(codes), 1),
        "entropy_images": int(len(codes)),
        "entropy_note": "estimate: sum over code positions of each position's histogram "
        "entropy across these images (an upper bound on the joint entropy, biased low for few "
        "images)",
    }
    if noise > 0:
        report["noise"] = noise
        report["uplink_capacity_bits"] = round(capacity_bits((c, h, w), bits, noise), 1)
        report["capacity_note"] = (
            f"at most 0.5*log2(1 + L^2/(4 s^2)) bits per value with s = {noise:g} steps of "
            "Gaussian noise before rounding (Shannon's bound for a value of bounded range)"
        )
    return report
