"""Edge-side benchmarking of exported partitions; torch-free by design.

Runs where only numpy and a runtime (onnxruntime, OpenVINO, TensorRT) are
installed: nothing here imports torch, even indirectly, and the runtimes are
imported inside the functions that use them.
"""

from __future__ import annotations

from patrol_compress.bench.runner import bench, machine_info
from patrol_compress.bench.runtimes import RUNTIME_NAMES, BenchError
from patrol_compress.contracts import MANIFEST, read_manifest, verify_manifest

__all__ = [
    "MANIFEST",
    "RUNTIME_NAMES",
    "BenchError",
    "bench",
    "machine_info",
    "read_manifest",
    "verify_manifest",
]
