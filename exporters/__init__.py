"""Exporters: edge and cloud partitions as checked, checksummed deployment artifacts.

One entry point, :func:`export_partitions` (and :func:`export_run` for a
run directory), and a registry of targets
(``EXPORTERS``): ``onnx``, ``openvino`` and ``trt``. Each target writes its
files, checks them numerically against torch and lists them in
``manifest.json``. Backends (onnxruntime, openvino, tensorrt) are imported only
inside the functions that use them, so importing this package needs neither.
Installed as ``patrol_compress.exporters`` (package-dir mapping in pyproject).
"""

from __future__ import annotations

from . import onnx as _onnx  # noqa: F401  (registers "onnx")
from . import openvino as _openvino  # noqa: F401  (registers "openvino")
from . import tensorrt as _tensorrt  # noqa: F401  (registers "trt")
from .base import EXPORTERS, PRECISIONS, ExportJob, Precision, Target
from .from_run import default_out, export_run
from .manifest import MANIFEST, read_manifest, verify_manifest
from .partitions import export_partitions

__all__ = [
    "EXPORTERS",
    "MANIFEST",
    "PRECISIONS",
    "ExportJob",
    "Precision",
    "Target",
    "default_out",
    "export_partitions",
    "export_run",
    "read_manifest",
    "verify_manifest",
]
