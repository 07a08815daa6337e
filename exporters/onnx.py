"""The ``onnx`` target: edge.onnx and cloud.onnx at the job's precision.

fp32 and fp16 are written by :mod:`.onnx_float`, INT8 by :mod:`.onnx_int8`
(which quantizes :mod:`.onnx_float`'s fp32 files). This module only chooses
between them and registers the target, so the imports run one way: the target
imports both exports, the INT8 export imports the float one, and the float
export imports neither. The ONNX file tools stay importable from here
(``run_onnxruntime``, ``check_onnx_file``, ``torch_to_onnx``), the path
users' code and the examples use.
"""

from __future__ import annotations

from .base import EXPORTERS, ExportJob, Target
from .onnx_float import check_onnx_file, export_onnx_float, run_onnxruntime, torch_to_onnx
from .onnx_int8 import export_onnx_int8

__all__ = ["check_onnx_file", "export_onnx", "run_onnxruntime", "torch_to_onnx"]


def export_onnx(job: ExportJob) -> list[str]:
    """Write edge.onnx and cloud.onnx at ``job.precision`` and check both with ORT."""
    if job.precision == "int8":
        return export_onnx_int8(job)
    return export_onnx_float(job)


EXPORTERS.add(
    "onnx",
    Target(
        export_onnx,
        "ONNX files (edge.onnx, cloud.onnx), checked with onnxruntime",
        precisions=("fp32", "fp16", "int8"),
        uplink_codes=True,
    ),
)
