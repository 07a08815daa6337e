"""How much an uplink carries: the hard bound and an empirical entropy estimate.

``bound_bits = bits * C * H * W`` per image is exact: no attacker learns more
from one image than the bits it sends. The empirical entropy is an
*estimate* of how many of them the codes actually use on given images: the
sum over code positions of each position's empirical entropy across the
images (the entropy of its histogram). A sum of marginal entropies bounds
the joint entropy from above, but a histogram from N images also
underestimates each marginal when ``2**bits`` is not small against N: the
number is labelled an estimate everywhere it is shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bound_bits(shape: tuple[int, int, int], bits: int) -> int:
    """``bits * C * H * W``: the most one image's uplink can carry."""
    c, h, w = shape
    return int(bits * c * h * w)


def empirical_entropy_bits(codes: np.ndarray) -> float:
    """Sum over positions of the empirical entropy (bits) of ``codes`` (N x ...) across N."""
    flat = np.asarray(codes).reshape(len(codes), -1)
    total = 0.0
    for column in flat.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        total += float(-(p * np.log2(p)).sum())
    return total


def uplink_report(codes: np.ndarray, bits: int) -> dict[str, Any]:
    """The bound and the entropy estimate of a quantized uplink on ``codes`` (N x C x H x W)."""
    shape = tuple(int(d) for d in codes.shape[1:])
    if len(shape) != 3:
        raise ValueError(f"expected N x C x H x W codes, found {list(codes.shape)}")
    c, h, w = shape
    return {
        "bits": bits,
        "shape": [c, h, w],
        "uplink_bits_max": bound_bits((c, h, w), bits),
        "empirical_entropy_bits": round(empirical_entropy_bits(codes), 1),
        "entropy_images": int(len(codes)),
        "entropy_note": "estimate: sum over code positions of each position's histogram "
        "entropy across these images (an upper bound on the joint entropy, biased low for few "
        "images)",
    }
