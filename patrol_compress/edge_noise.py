"""The noise a noisy uplink's exported edge takes as input, drawn where the edge runs.

Torch-free, like :mod:`patrol_compress.contracts`: an edge device, the
benchmark and the adaptive attack draw it without torch.
:mod:`patrol_compress.uplink.noise` says why the exported graph does not draw
the noise itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from patrol_compress.contracts import NOISE_INPUT

_TWO_53 = float(2**53)


def draw_noise(shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 values of ``shape`` from ``os.urandom`` (Box-Muller).

    Why not numpy's generators: PCG64 and the Mersenne twister are fast and
    statistically good but not cryptographic; their state can be recovered from
    enough output, and here the output is added to what the cloud receives.
    ``os.urandom`` is the OS's cryptographic source. Measured on the build
    machine (``docs/measurements.md``): 25 us for one image of 12 x 2 x 2
    values, 260 us for 64 x 8 x 8, mostly numpy's per-call overhead.
    """
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    pairs = (count + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(pairs, 2)
    # 53 random bits per uniform; 1 - u lies in (0, 1], so the log never sees 0.
    u1 = 1.0 - (raw[:, 0] >> np.uint64(11)).astype(np.float64) / _TWO_53
    u2 = (raw[:, 1] >> np.uint64(11)).astype(np.float64) / _TWO_53
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return values.astype(np.float32).reshape(shape)


def noise_shape(inputs: Sequence[tuple[str, Sequence[Any]]]) -> tuple[int, ...] | None:
    """The per-image shape of a noisy uplink's noise input, from the edge's inputs (name and
    shape, batch first, the image first); None for an edge that takes only the image.

    Raises ValueError for any other second input, or a noise input without a fixed shape:
    the callers (the benchmark, the adaptive attack) feed nothing they cannot name.
    """
    extra = list(inputs[1:])
    if not extra:
        return None
    names = [name for name, _ in extra]
    dims = list(extra[0][1])[1:]
    if names != [NOISE_INPUT] or not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(
            f"the edge takes inputs {names} {dims} besides the image; expected only "
            f"'{NOISE_INPUT}' of a fixed per-image shape (a noisy uplink's edge)"
        )
    return tuple(int(d) for d in dims)


def ov_inputs(ports: Sequence[Any]) -> list[tuple[str, list[int]]]:
    """(name, shape) of an OpenVINO model's input ports, -1 for a dynamic dimension. A port
    named :data:`NOISE_INPUT` among its names gets that name (OpenVINO merges the names of
    tensors it fuses, and ``get_any_name`` may return another)."""
    found = []
    for port in ports:
        name = NOISE_INPUT if NOISE_INPUT in port.get_names() else port.get_any_name()
        found.append((name, [d.get_length() if d.is_static else -1 for d in port.partial_shape]))
    return found


def edge_feed(
    inputs: Sequence[tuple[str, Sequence[Any]]],
    x: np.ndarray,
    normal: np.ndarray | None = None,
    draw: Callable[[tuple[int, ...]], np.ndarray] = draw_noise,
) -> dict[str, np.ndarray]:
    """An exported edge's inputs for images ``x``: ``x`` under the first input's name and,
    for a noisy uplink's edge, its noise: ``normal`` when given (it must be the codes'
    shape), else a fresh ``draw`` (:func:`draw_noise` by default). ``inputs`` is the edge's
    (name, shape) list; ValueError as :func:`noise_shape` raises it."""
    feed = {inputs[0][0]: x}
    shape = noise_shape(inputs)
    if shape is None:
        return feed
    want = (len(x), *shape)
    if normal is not None and tuple(normal.shape) != want:
        raise ValueError(f"noise of shape {list(normal.shape)}; the edge takes {list(want)}")
    feed[NOISE_INPUT] = np.asarray(draw(want) if normal is None else normal, dtype=np.float32)
    return feed
