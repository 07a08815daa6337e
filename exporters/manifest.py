"""manifest.json: what an export folder holds, what each partition costs, and checksums.

Written last, after every file passed its checks, so a folder with a manifest
is a complete artifact. Reading and verification (:func:`read_manifest`,
:func:`verify_manifest`) live in the torch-free :mod:`patrol_compress.contracts`
because they run on edge devices; they are re-exported here so exporter users
find them next to the writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from patrol_compress.contracts import (
    MANIFEST,
    Manifest,
    check_record,
    read_manifest,
    verify_manifest,
)
from patrol_compress.io import package_versions, sha256_file
from patrol_compress.metrics.flops import count_macs, count_params, used_modules, weight_bytes

from .base import ExportJob

__all__ = ["MANIFEST", "build_manifest", "file_entries", "read_manifest", "verify_manifest"]


def file_entries(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each named file under ``root``."""
    return {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
        for name in sorted(set(names))
    }


def _bytes_sent(job: ExportJob, edge_out: list[int], element_bytes: int) -> int:
    """What one image's uplink takes on the wire: sub-byte codes packed, else the tensor."""
    values = int(np.prod(edge_out))
    if job.uplink is not None:
        from patrol_compress.uplink import packed_bytes

        return packed_bytes(values, int(job.uplink["bits"]))
    return values * element_bytes


def build_manifest(
    job: ExportJob,
    files: Iterable[str],
    split: int,
    target: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest for the files ``files`` in ``job.work_dir``.

    ``bytes_sent`` is what the edge uplinks per image: the edge output's
    elements times 4 bytes (fp32), 2 (fp16, whose split tensor is FP16) or 1
    (int8, whose edge sends uint8; scale and zero point are in ``quantization``).
    MACs count convolutions and linear layers for one image.
    """
    edge_out = [int(d) for d in job.edge_ref.shape[1:]]
    # What cloud.onnx holds: not the classifier a re-id head only uses in training.
    cloud_used = used_modules(job.cloud, edge_out)
    element_bytes = np.dtype(job.sent_dtype).itemsize
    manifest: dict[str, Any] = {
        "split": split,
        "target": target,
        "precision": job.precision,
        "opset": job.opset,
        "files": file_entries(job.work_dir, files),
        "input_shape": list(job.input_shape),
        "edge_output_shape": edge_out,
        "edge_output_dtype": job.sent_dtype,
        "output_shape": [int(d) for d in job.cloud_ref.shape[1:]],
        "edge": {
            "params": count_params(job.edge),
            "weight_bytes": weight_bytes(job.edge, job.precision),
            "macs": count_macs(job.edge, job.input_shape),
            "bytes_sent": _bytes_sent(job, edge_out, element_bytes),
        },
        "cloud": {
            "params": count_params(job.cloud, cloud_used),
            "weight_bytes": weight_bytes(job.cloud, job.precision, cloud_used),
            "macs": count_macs(job.cloud, tuple(edge_out)),
        },
        "versions": package_versions(),
    }
    if job.notes:
        manifest["notes"] = dict(job.notes)
    if job.quantization is not None:
        manifest["quantization"] = dict(job.quantization)
    if job.uplink is not None:
        values = int(np.prod(edge_out))
        manifest["uplink"] = {
            **job.uplink,
            "uplink_bits_max": values * int(job.uplink["bits"]),
            "packed_bytes": _bytes_sent(job, edge_out, element_bytes),
        }
        if job.uplink.get("noise"):
            from patrol_compress.uplink import capacity_bits

            c, h, w = edge_out
            capacity = capacity_bits((c, h, w), int(job.uplink["bits"]), job.uplink["noise"])
            manifest["uplink"]["uplink_capacity_bits"] = round(capacity, 1)
            manifest["uplink"]["noise_shape"] = ["batch", *edge_out]  # the codes' shape
    manifest.update(extra or {})
    check_record(Manifest, manifest, job.work_dir / MANIFEST)  # what every reader will check
    return manifest
