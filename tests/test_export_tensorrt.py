"""TensorRT export: real engines where tensorrt is installed; errors and build logic everywhere.

The ``tensorrt``-marked test builds real engines and is skipped only when the
``tensorrt`` module is absent (on a machine with it but without a GPU it checks
the "needs a CUDA GPU" error instead). The other tests need neither: they check
the user-facing errors and, with a recording stand-in for the ``tensorrt``
module, which builder calls are made for TensorRT 10 (weak typing, FP16 flag)
and TensorRT 11 (no FP16 flag, strongly typed network).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from patrol_compress.errors import ExportError, MissingExtraError
from patrol_compress.exporters import export_partitions, verify_manifest
from patrol_compress.exporters.tensorrt import TIMING_CACHE, build_engine, is_strongly_typed_only

from .helpers import tiny_resnet

SHAPE = (3, 32, 32)


@pytest.mark.tensorrt
def test_engines_build_check_and_reuse_the_timing_cache(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    model = tiny_resnet()
    out = tmp_path / "trt"
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="CUDA GPU"):
            export_partitions(model, 2, out, "trt", "fp32", SHAPE)
        assert not out.exists()
        return
    first = export_partitions(model, 2, out, "trt", "fp32", SHAPE)
    assert {"edge.engine", "cloud.engine", TIMING_CACHE, "edge.onnx"} <= set(first["files"])
    assert first["notes"]["timing_cache_reused"] is False
    verify_manifest(out)
    again = export_partitions(model, 2, out, "trt", "fp32", SHAPE, force=True)
    assert again["notes"]["timing_cache_reused"] is True
    half = export_partitions(model, 2, tmp_path / "trt16", "trt", "fp16", SHAPE)
    assert half["edge_output_dtype"] == "float16"


def test_missing_tensorrt_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'patrol-compress\[tensorrt\]'"):
        export_partitions(tiny_resnet(), 2, tmp_path / "x", "trt", "fp32", SHAPE)
    assert not (tmp_path / "x").exists()


def test_without_a_gpu_the_error_says_a_cuda_gpu_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExportError, match="needs a CUDA GPU"):
        export_partitions(tiny_resnet(), 2, tmp_path / "x", "trt", "fp32", SHAPE)
    assert not (tmp_path / "x").exists()


class _Recorder:
    """A stand-in for the parts of the ``tensorrt`` module build_engine uses."""

    def __init__(self, major: int) -> None:
        self.calls: list[tuple[Any, ...]] = []
        rec = self.calls
        flags = {"TF32": "TF32"} if major >= 11 else {"TF32": "TF32", "FP16": "FP16"}
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class Logger:
            WARNING = 2

            def __init__(self, severity: int) -> None:
                pass

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                rec.append(("set_flag", flag))

            def clear_flag(self, flag: str) -> None:
                rec.append(("clear_flag", flag))

            def create_timing_cache(self, data: bytes) -> Cache:
                rec.append(("cache_from", data))
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                rec.append(("set_cache", ignore_mismatch))

            def add_optimization_profile(self, profile: Any) -> None:
                rec.append(("profile", profile.shapes))

        class Profile:
            shapes: tuple[Any, ...] = ()

            def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
                self.shapes = (name, min, opt, max)

        class Network:
            def get_input(self, i: int) -> Any:
                return types.SimpleNamespace(name="input")

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                rec.append(("network_flags", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                return b"engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                rec.append(("parsed", len(data)))
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser


@pytest.mark.parametrize(
    ("major", "precision", "net_flags", "expect", "forbid"),
    [
        (10, "fp16", 0, {("set_flag", "FP16")}, {("clear_flag", "TF32")}),
        (10, "fp32", 0, {("clear_flag", "TF32")}, {("set_flag", "FP16")}),
        (11, "fp16", 1 << 5, set(), {("set_flag", "FP16")}),
        (11, "fp32", 1 << 5, {("clear_flag", "TF32")}, set()),
    ],
)
def test_build_engine_uses_the_right_precision_mechanism(
    tmp_path: Path, major: int, precision: str, net_flags: int, expect: set[Any], forbid: set[Any]
) -> None:
    trt: Any = _Recorder(major)
    onnx_file = tmp_path / "edge.onnx"
    onnx_file.write_bytes(b"onnx-bytes")
    assert is_strongly_typed_only(trt) is (major >= 11)
    engine, cache = build_engine(trt, onnx_file, SHAPE, precision, 8, 32, b"old")
    assert engine == b"engine" and cache == b"old+"
    calls = set(c for c in trt.calls if c[0] != "profile")
    assert ("network_flags", net_flags) in calls
    assert expect <= calls and not (forbid & calls)
    assert ("cache_from", b"old") in calls and ("set_cache", False) in calls
    assert ("pool", "WORKSPACE", 1 << 30) in calls
    assert ("profile", ("input", (1, *SHAPE), (8, *SHAPE), (32, *SHAPE))) in trt.calls


def test_opt_batch_must_fit_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ExportError, match="opt_batch"):
        export_partitions(
            tiny_resnet(), 2, tmp_path / "x", "trt", "fp32", SHAPE, opt_batch=64, max_batch=32
        )
    assert list(tmp_path.iterdir()) == []
