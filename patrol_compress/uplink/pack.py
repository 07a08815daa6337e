"""Sub-byte uplink codes packed for transmission, and unpacked by the cloud.

The edge's ONNX graph emits one uint8 per value (runtimes have no sub-byte
tensors); a device sending ``bits < 8`` codes packs ``8 // bits`` of them into
each byte, little end first, so a 4-bit uplink of 256 values is 128 bytes
on the wire. :func:`packed_bytes` is what ``bench`` and the manifest report.
"""

from __future__ import annotations

import math

import numpy as np

BITS = (1, 2, 4, 8)


def packed_bytes(values: int, bits: int) -> int:
    """Bytes on the wire for ``values`` codes of ``bits`` bits (whole bytes per image)."""
    _check_bits(bits)
    return math.ceil(values * bits / 8)


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"uplink bits must be one of {BITS}, found {bits}")


def pack(codes: np.ndarray, bits: int) -> bytes:
    """One image's codes (any shape, uint8 below ``2**bits``) as packed bytes."""
    _check_bits(bits)
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 2**bits:
        raise ValueError(f"a code is {int(flat.max())}, above {2**bits - 1} for {bits} bits")
    if bits == 8:
        return flat.tobytes()
    per = 8 // bits
    padded = np.zeros(math.ceil(flat.size / per) * per, dtype=np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per).astype(np.uint16)
    shifts = (np.arange(per, dtype=np.uint16) * bits)[None, :]
    return (lanes << shifts).sum(axis=1).astype(np.uint8).tobytes()


def unpack(blob: bytes, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """The codes of ``shape`` from :func:`pack`'s bytes."""
    _check_bits(bits)
    n = int(np.prod(shape))
    raw = np.frombuffer(blob, dtype=np.uint8)
    if raw.size != packed_bytes(n, bits):
        raise ValueError(f"{raw.size} bytes hold no {n} codes of {bits} bits")
    if bits == 8:
        return raw.reshape(shape).copy()
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits)[None, :]
    codes = (raw[:, None] >> shifts) & np.uint8(2**bits - 1)
    return codes.reshape(-1)[:n].reshape(shape).astype(np.uint8)
