"""What every export target receives, and the registry of targets.

A target's ``run`` is one function ``(job) -> list of file names it wrote
into job.work_dir``. It must check its own output against the torch references in
the job and raise :class:`~patrol_compress.errors.ExportError` on any mismatch;
the caller (:func:`patrol_compress.exporters.export_partitions`) then throws the
whole work folder away, so a failed export never leaves files behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from patrol_compress.registry import Registry

if TYPE_CHECKING:
    from .int8 import Int8Data

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass
class ExportJob:
    """One export: the eval-mode partition copies, options and torch reference outputs.

    ``sample`` is a fixed random batch of images; ``edge_ref`` is the torch
    edge's output on it and ``cloud_ref`` the torch cloud's output on
    ``edge_ref``, both float32 numpy arrays, so every target checks parity
    against the same numbers.
    """

    edge: nn.Module
    cloud: nn.Module
    work_dir: Path
    precision: Precision
    input_shape: tuple[int, int, int]
    opset: int
    sample: np.ndarray
    edge_ref: np.ndarray
    cloud_ref: np.ndarray
    previous_dir: Path | None = None
    opt_batch: int = 8
    max_batch: int = 32
    notes: dict[str, Any] = field(default_factory=dict)
    int8: Int8Data | None = None
    """Calibration and test images (``precision == "int8"`` only): INT8 is
    calibrated on data and judged by task accuracy, which random tensors cannot do."""
    quantization: dict[str, Any] | None = None
    """What an INT8 target did (split tensor scale/zero-point, parity); the manifest records it."""
    uplink: dict[str, Any] | None = None
    """A quantized uplink (bits, per-channel step and lower end): the edge sends its uint8
    codes and the cloud decodes them (:mod:`patrol_compress.uplink`)."""
    noise_sample: np.ndarray | None = None
    """A noisy uplink's second edge input for the parity sample (``NOISE_INPUT``): the
    standard normal draw ``edge_ref`` was computed with; None for every other edge."""

    @property
    def sent_dtype(self) -> str:
        """Element type of the edge output, i.e. of what goes over the uplink."""
        if self.uplink is not None:
            return "uint8"
        return {"fp16": "float16", "int8": "uint8"}.get(self.precision, "float32")


def _always_available() -> None:
    return None


@dataclass(frozen=True)
class Target:
    """An export target: ``run`` writes and checks files; ``check_available`` fails fast.

    ``check_available`` raises (MissingExtraError, ExportError) before any model
    work when the backend or hardware is absent, so a user learns about a
    missing extra in a second rather than after the ONNX export.
    """

    run: Callable[[ExportJob], list[str]]
    description: str
    check_available: Callable[[], None] = _always_available
    precisions: tuple[str, ...] = ("fp32", "fp16")
    """The precisions this target can write; others are refused before any work."""
    uplink_codes: bool = False
    """Whether it can carry a quantized uplink: an edge that ends in uint8 codes and a
    cloud that starts by decoding them. Off unless a target says so, so that a new
    target refuses a quantized model in one line instead of building what it cannot."""


EXPORTERS: Registry[Target] = Registry("export target")
