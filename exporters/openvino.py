"""The ``openvino`` target: OpenVINO IR (edge.xml/.bin, cloud.xml/.bin) at the job's precision.

fp32 and fp16 IR are converted from the checked ONNX files by
:mod:`.openvino_float`, INT8 IR is quantized by NNCF in :mod:`.openvino_int8`.
This module only chooses between them, keeps the thread's signal stack, and
registers the target, so the imports run one way: the target imports both
exports, the INT8 export imports the float one's runtime pieces, and the float
export imports neither. ``F32_CONFIG``, ``import_openvino`` and
``run_openvino`` stay importable from here.
"""

from __future__ import annotations

from patrol_compress.signal_stack import keep_signal_stack

from .base import EXPORTERS, ExportJob, Target
from .openvino_float import F32_CONFIG, export_openvino_float, import_openvino, run_openvino
from .openvino_int8 import export_openvino_int8

__all__ = ["F32_CONFIG", "export_openvino", "import_openvino", "run_openvino"]


def _check_available() -> None:
    import_openvino()


def export_openvino(job: ExportJob) -> list[str]:
    """Write the ONNX pair, convert each to IR, and check the IR against torch.

    The calling thread gets its alternate signal stack back afterwards: the CPU
    plugins the export creates may otherwise leave it unmapped, and the next
    Python signal handler (a SIGCHLD after a subprocess, Ctrl-C) would crash
    the process (:mod:`patrol_compress.signal_stack`).
    """
    with keep_signal_stack():
        return _export_openvino(job)


def _export_openvino(job: ExportJob) -> list[str]:
    if job.precision == "int8":
        return export_openvino_int8(job)
    return export_openvino_float(job)


EXPORTERS.add(
    "openvino",
    Target(
        export_openvino,
        "OpenVINO IR (edge/cloud .xml + .bin) plus the ONNX it was converted from "
        "(int8: NNCF-quantized IR only)",
        _check_available,
        precisions=("fp32", "fp16", "int8"),
        uplink_codes=True,
    ),
)
