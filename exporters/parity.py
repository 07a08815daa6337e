"""Numerical parity between an exported partition and torch, with named tolerances.

FP32: a compiled runtime reorders float sums, nothing more, so outputs must
match torch to ``FP32_RTOL``/``FP32_ATOL`` (``docs/measurements.md``: ORT and
OpenVINO with the f32 hint stay within 3e-6 on outputs of order one). The
reordering error of a sum scales with its terms, not with its result: an output
element near zero that is the difference of large terms errs by about one ulp
of the *layer's* scale. ``FP32_ATOL`` is therefore taken relative to
``max(1, max|ref|)``, as the removal's exactness check does. Measured: the
trained quickstart target's split-2 edge (outputs up to 8.7) erred by 3.05e-5
on near-zero elements in onnxruntime, which a fixed 1e-5 refused.

FP16: weights and activations are rounded to 11 significant bits (relative step
4.9e-4) and the rounding accumulates over depth, so an element-wise tolerance
around zero would be meaningless. The absolute part is therefore scaled by the
reference's largest magnitude: ``|got - ref| <= FP16_ATOL * max|ref| + FP16_RTOL * |ref|``.
Measured on ResNet-18 partitions (32-128 px, split 2 and 4, ORT and OpenVINO,
which compute in fp32 between fp16 tensors): max error about 5e-4 of the
output range, one fp16 step. 1e-2 leaves room for runtimes with native fp16
kernels (TensorRT) while a wrong weight, layout or BN fold errs by O(1).
"""

from __future__ import annotations

import numpy as np

from patrol_compress.errors import ExportError

FP32_RTOL = 1e-3
FP32_ATOL = 1e-5  # relative to max(1, max|ref|), see the module docstring
FP16_RTOL = 1e-2
FP16_ATOL = 1e-2  # relative to max|ref|, see the module docstring
CODES_MAX_MISMATCH = {"fp32": 0.01, "fp16": 0.05}
"""A quantized uplink's uint8 codes: the share of codes that may differ from torch's, by
one step at most. Rounding sends a value that lands on a level's boundary either way, so
a float difference of one ulp can flip a code; a wrong export differs by many steps."""


def tolerance(precision: str, ref: np.ndarray) -> tuple[float, float]:
    """(rtol, atol) for comparing an output at ``precision`` with the FP32 reference."""
    if precision == "fp16":
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        return FP16_RTOL, FP16_ATOL * max(scale, 1e-6)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return FP32_RTOL, FP32_ATOL * max(scale, 1.0)


def check_codes(what: str, got: np.ndarray, ref: np.ndarray, precision: str) -> float:
    """Quantized-uplink codes: equal to torch's but for boundary ties (``CODES_MAX_MISMATCH``)."""
    if got.dtype != np.uint8:
        raise ExportError(f"{what}: sends {got.dtype}, expected the uplink's uint8 codes")
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    worst = int(diff.max()) if diff.size else 0
    share = float((diff > 0).mean()) if diff.size else 0.0
    allowed = CODES_MAX_MISMATCH.get(precision, 0.01)
    if worst > 1 or share > allowed:
        raise ExportError(
            f"{what}: uplink codes differ from torch's on {share:.1%} of values (at most "
            f"{worst} steps; allowed {allowed:.0%} by one step)"
        )
    return float(worst)


def check_parity(what: str, got: np.ndarray, ref: np.ndarray, precision: str) -> float:
    """Raise ExportError unless ``got`` matches ``ref``; returns the max absolute error."""
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportError(f"{what}: output shape {tuple(got.shape)} != torch {tuple(ref.shape)}")
    if ref.dtype == np.uint8:
        return check_codes(what, got, ref, precision)
    got32 = got.astype(np.float32)
    if not np.isfinite(ref).all():
        raise ExportError(f"{what}: torch's own output has NaN/Inf (non-finite weights?)")
    if not np.isfinite(got32).all():
        raise ExportError(f"{what}: output has NaN/Inf where torch's is finite")
    rtol, atol = tolerance(precision, ref)
    err = np.abs(got32 - ref)
    max_err = float(err.max()) if err.size else 0.0
    if not np.all(err <= atol + rtol * np.abs(ref)):
        raise ExportError(
            f"{what}: {precision} output differs from torch (max abs error {max_err:.3g}, "
            f"allowed atol {atol:.3g} + rtol {rtol:g} x |ref|)"
        )
    return max_err
