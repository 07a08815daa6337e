"""Float (fp32, fp16) OpenVINO IR (edge and cloud .xml/.bin), converted from the ONNX files.

Converting from the ONNX file (rather than from torch again) means the IR and
the ONNX in the same artifact describe the same graph, and the FP16 artifact
keeps the FP16 split tensor of the ONNX. ``ov.save_model`` compresses weights
to FP16 *by default*; the flag is always passed explicitly so an fp32 artifact
really holds fp32 weights. Parity is checked with
``INFERENCE_PRECISION_HINT="f32"``: without it this CPU runs in bf16 and misses
torch by ~2e-2 (``docs/measurements.md``), which would hide real export errors.

The ``openvino`` target (:mod:`.openvino`) picks this module or
:mod:`.openvino_int8` by precision. The runtime's pieces both exports use (the
optional import, the f32 hint, the runner) live here, so the target and the
INT8 export import this module and it imports neither of them.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX
from patrol_compress.edge_noise import ov_inputs
from patrol_compress.errors import ExportError, first_line, import_optional

from .base import ExportJob
from .onnx_float import edge_inputs, export_onnx_float
from .parity import check_parity

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def import_openvino() -> ModuleType:
    """The ``openvino`` module, or MissingExtraError naming the extra to install."""
    return import_optional("openvino", "openvino", "OpenVINO export")


def run_openvino(
    path: Path,
    x: np.ndarray,
    config: dict[str, Any] | None = None,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """Compile an IR (or ONNX) file on CPU and run it once; ``x`` is cast to the input type.
    ``noise`` feeds a noisy uplink's edge its second input (``NOISE_INPUT``)."""
    ov = import_openvino()
    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", dict(F32_CONFIG if config is None else config))
    dtype = compiled.input(0).get_element_type().to_dtype()
    result = compiled(edge_inputs(path, ov_inputs(compiled.inputs), x.astype(dtype), noise))
    return np.asarray(result[compiled.output(0)])


def export_openvino_float(job: ExportJob) -> list[str]:
    """Write the fp32 or fp16 ONNX pair, convert each to IR, and check the IR against torch."""
    ov = import_openvino()
    files = export_onnx_float(job)
    compress = job.precision == "fp16"
    for part, onnx_name, x, noise, ref in (
        ("edge", EDGE_ONNX, job.sample, job.noise_sample, job.edge_ref),
        ("cloud", CLOUD_ONNX, job.edge_ref, None, job.cloud_ref),
    ):
        xml = job.work_dir / f"{part}.xml"
        try:
            model = ov.convert_model(str(job.work_dir / onnx_name))
            ov.save_model(model, str(xml), compress_to_fp16=compress)
        except Exception as exc:  # OpenVINO raises its own RuntimeError types
            first = first_line(exc)
            raise ExportError(f"OpenVINO conversion of {onnx_name} failed: {first}") from exc
        got = run_openvino(xml, x, noise=noise)
        check_parity(f"{part}.xml (OpenVINO, f32 hint)", got, ref, job.precision)
        files += [xml.name, f"{part}.bin"]
    return files
