"""OpenVINO export: IR parity (f32 hint), explicit FP16 compression, missing-extra error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from patrol_compress.errors import MissingExtraError
from patrol_compress.exporters import export_partitions, verify_manifest
from patrol_compress.exporters.parity import FP16_ATOL, FP16_RTOL, FP32_ATOL, FP32_RTOL
from patrol_compress.models import BlockNet, split

from .helpers import tiny_resnet

SHAPE = (3, 32, 32)


def run_ir(path: Path, x: np.ndarray) -> np.ndarray:
    from patrol_compress.exporters.openvino import run_openvino

    return run_openvino(path, x)


def torch_parts(model: BlockNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edge, cloud = split(model, 2)
    with torch.no_grad():
        mid = edge(torch.from_numpy(x))
        return mid.numpy(), cloud(mid).numpy()


@pytest.mark.openvino
def test_fp32_ir_matches_torch_at_several_batch_sizes(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = tiny_resnet()
    out = tmp_path / "ov32"
    manifest = export_partitions(model, 2, out, "openvino", "fp32", SHAPE)
    assert set(manifest["files"]) == {
        "edge.onnx",
        "cloud.onnx",
        "edge.xml",
        "edge.bin",
        "cloud.xml",
        "cloud.bin",
    }
    verify_manifest(out)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, *SHAPE)).astype(np.float32)
        mid_ref, out_ref = torch_parts(model, x)
        mid = run_ir(out / "edge.xml", x)
        np.testing.assert_allclose(mid, mid_ref, rtol=FP32_RTOL, atol=FP32_ATOL)
        np.testing.assert_allclose(
            run_ir(out / "cloud.xml", mid), out_ref, rtol=FP32_RTOL, atol=FP32_ATOL
        )


@pytest.mark.openvino
def test_fp16_ir_has_half_size_weights_and_stays_within_tolerance(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = tiny_resnet()
    m32 = export_partitions(model, 2, tmp_path / "ov32", "openvino", "fp32", SHAPE)
    m16 = export_partitions(model, 2, tmp_path / "ov16", "openvino", "fp16", SHAPE)
    # compress_to_fp16 is passed explicitly: fp32 IR keeps 4-byte weights, fp16 halves them.
    ratio = m16["files"]["edge.bin"]["bytes"] / m32["files"]["edge.bin"]["bytes"]
    assert 0.45 < ratio < 0.55
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    mid_ref, out_ref = torch_parts(model, x)
    mid = run_ir(tmp_path / "ov16" / "edge.xml", x)
    assert mid.dtype == np.float16  # the split tensor is sent as fp16
    out = run_ir(tmp_path / "ov16" / "cloud.xml", mid)
    for got, ref in ((mid, mid_ref), (out, out_ref)):
        err = np.abs(got.astype(np.float32) - ref)
        assert np.all(err <= FP16_ATOL * np.abs(ref).max() + FP16_RTOL * np.abs(ref))


def test_missing_openvino_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'patrol-compress\[openvino\]'"):
        export_partitions(tiny_resnet(), 2, tmp_path / "x", "openvino", "fp32", SHAPE)
    assert not (tmp_path / "x").exists()
