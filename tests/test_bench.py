"""Bench: report contents, budgets and modes, checksum gate, torch-free execution, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from patrol_compress.bench import BenchError, bench, read_manifest
from patrol_compress.bench.memory import PeakRss
from patrol_compress.bench.runner import plan, transfer_ms
from patrol_compress.bench.timing import (
    DEFAULT_SECONDS,
    DEFAULT_WARMUP_SECONDS,
    Budget,
    parallel,
    sequential,
)
from patrol_compress.errors import ArtifactError
from patrol_compress.exporters import export_partitions
from patrol_compress.models import build_model
from patrol_compress.recipe import ModelConfig

SHAPE = (3, 32, 32)
FAST: dict[str, Any] = {"warmup": 1, "runs": 5, "threads": 1}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ModelConfig(width=0.125, stem="small"), num_classes=10).eval()
    out = tmp_path_factory.mktemp("bench") / "onnx-split2-fp32"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: conftest's per-test setting is not active
    try:
        export_partitions(model, 2, out, "onnx", "fp32", SHAPE)
    finally:
        torch.set_num_threads(before)
    return out


def test_onnxruntime_report_has_percentiles_memory_and_uplink(
    artifact: Path, tmp_path: Path
) -> None:
    json_path = tmp_path / "reports" / "bench.json"
    report = bench(
        artifact, "onnxruntime", batches=(1, 2), uplink_mbps=8.0, json_path=json_path, **FAST
    )
    manifest = read_manifest(artifact)
    assert report["runtime"] == "onnxruntime" and report["split"] == 2
    assert [r["batch"] for r in report["results"]] == [1, 2]
    assert (report["mode"], report["runs"], report["warmup"]) == ("latency", 5, 1)
    assert report["seconds"] is None and report["warmup_seconds"] is None
    for row in report["results"]:
        assert row["calls"] == 5 and row["streams"] == 1 and row["duration_s"] > 0
        assert row["wall_p50_ms"] == row["p50_ms"]  # onnxruntime: the wall clock is the timer
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] / (row["p50_ms"] / 1e3), rel=1e-3)
        assert row["peak_rss_mb"] is None or row["peak_rss_mb"] >= 0
        assert row["edge_plus_transfer_ms"] == pytest.approx(
            row["per_image_ms"] + report["transfer_ms_per_image"], abs=1e-3
        )
    sent = manifest["edge"]["bytes_sent"]
    assert report["bytes_sent_per_image"] == sent == 16 * 8 * 8 * 4
    assert report["transfer_ms_per_image"] == pytest.approx(sent * 8 / 8e6 * 1e3, abs=1e-4)
    assert report["edge_files"] == ["edge.onnx"]
    assert report["edge_file_bytes"] == manifest["files"]["edge.onnx"]["bytes"]
    assert report["weight_bytes"] == manifest["edge"]["weight_bytes"]
    assert report["machine"]["logical_cpus"] >= 1 and "onnxruntime" in report["versions"]
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert [p.name for p in json_path.parent.iterdir()] == ["bench.json"]  # no temp files left


@pytest.mark.openvino
def test_openvino_converts_onnx_when_no_ir_is_present(artifact: Path) -> None:
    pytest.importorskip("openvino")
    report = bench(artifact, "openvino", batches=(1,), **FAST)
    assert report["edge_files"] == ["edge.onnx"] and report["ov_precision_hint"] == "f32"
    assert report["results"][0]["p50_ms"] > 0


@pytest.mark.openvino
def test_openvino_runs_the_ir_of_an_fp16_export(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = build_model(ModelConfig(width=0.125, stem="small"), num_classes=10).eval()
    out = tmp_path / "ov16"
    export_partitions(model, 2, out, "openvino", "fp16", SHAPE)
    report = bench(out, "openvino", batches=(2,), uplink_mbps=1.0, **FAST)
    assert report["edge_files"] == ["edge.xml", "edge.bin"] and report["precision"] == "fp16"
    assert report["bytes_sent_per_image"] == 16 * 8 * 8 * 2  # the split tensor is fp16
    assert report["results"][0]["batch"] == 2 and report["results"][0]["p50_ms"] > 0


def test_tampered_artifact_is_refused_before_timing(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in artifact.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "edge.onnx").read_bytes())
    data[100] ^= 0xFF
    (copy / "edge.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"edge\.onnx: sha256 does not match"):
        bench(copy, "onnxruntime", batches=(1,), **FAST)


def test_unsupported_runtime_and_bad_options_are_user_errors(artifact: Path) -> None:
    with pytest.raises(BenchError, match="--runtime onnxruntime"):
        bench(artifact, "torch")
    with pytest.raises(BenchError, match="unknown runtime 'tflite'"):
        bench(artifact, "tflite")
    with pytest.raises(BenchError, match=r"batch size \(--batch\) 0: expected"):
        bench(artifact, batches=(0,))
    with pytest.raises(BenchError, match=r"runs \(--runs\) 0: expected a whole number"):
        bench(artifact, runs=0)
    with pytest.raises(BenchError, match="uplink_mbps"):
        bench(artifact, uplink_mbps=0)


def test_transfer_time_and_memory_probe() -> None:
    assert transfer_ms(125_000, 1.0) == pytest.approx(1000.0)  # 1 Mbit over 1 Mbit/s
    probe = PeakRss()
    probe.start()
    block = bytearray(64 << 20)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    peak = probe.peak_mb()
    del block
    if probe.method == "VmHWM-reset":
        assert peak is not None and peak >= 60


BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.mark.parametrize(
    "runtime", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)]
)
def test_bench_cli_runs_without_torch(artifact: Path, tmp_path: Path, runtime: str) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino")
    out = tmp_path / "r.json"
    script = BLOCK_TORCH + textwrap.dedent(f"""
        from patrol_compress.cli.app import app
        try:
            app(["bench", {str(artifact)!r}, "--runtime", {runtime!r}, "--batch", "1,2",
                 "--runs", "3", "--warmup", "1",
                 "--threads", "1", "--uplink-mbps", "10", "--json", {str(out)!r}])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("EXIT", code, "TORCH", leaked)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "EXIT 0 TORCH []" in proc.stdout, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["runtime"] == runtime
    assert [r["batch"] for r in report["results"]] == [1, 2]
    assert report["bytes_sent_per_image"] == 16 * 8 * 8 * 4


def test_importing_the_package_and_cli_loads_no_runtime() -> None:
    script = (
        "import sys, patrol_compress, patrol_compress.cli.app, patrol_compress.bench\n"
        "print(sorted(m for m in ('onnxruntime', 'openvino', 'tensorrt') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_bench_cli_prints_a_table_and_reports_bad_input_in_one_line(artifact: Path) -> None:
    from patrol_compress.cli.app import app

    runner = CliRunner()
    ok = runner.invoke(
        app, ["bench", str(artifact), "--batch", "1", "--runs", "3", "--warmup", "0"]
    )
    assert ok.exit_code == 0, ok.output
    assert "p50 ms" in ok.output and "onnxruntime" in ok.output
    bad = runner.invoke(app, ["bench", str(artifact), "--batch", "1,x"])
    assert bad.exit_code == 2 and "--batch expects" in bad.output
    missing = runner.invoke(app, ["bench", str(artifact.parent / "nope")])
    assert missing.exit_code == 2 and "no manifest" in missing.output


# Time budgets and throughput mode: what is recorded and how the numbers relate, never how fast.
QUICK: dict[str, Any] = {"seconds": 0.2, "warmup_seconds": 0.05, "threads": 1}


def test_seconds_measures_until_the_deadline_and_records_the_budget(artifact: Path) -> None:
    report = bench(artifact, "onnxruntime", batches=(1, 2), **QUICK)
    assert report["mode"] == "latency" and report["seconds"] == 0.2
    assert report["warmup_seconds"] == 0.05
    assert report["runs"] is None and report["warmup"] is None
    for row in report["results"]:
        assert row["calls"] > 0 and row["streams"] == 1
        assert row["duration_s"] >= 0.2  # the block runs until its deadline has passed
        assert row["images_per_s"] == pytest.approx(
            row["calls"] * row["batch"] / row["duration_s"], rel=1e-2
        )


def test_default_budget_is_time_and_runs_or_warmup_replace_it() -> None:
    default = plan()
    assert default.mode == "latency"
    assert default.timed == Budget(seconds=DEFAULT_SECONDS)
    assert default.warmup == Budget(seconds=DEFAULT_WARMUP_SECONDS)
    compat = plan(runs=50, warmup=10)
    assert compat.timed == Budget(calls=50) and compat.warmup == Budget(calls=10)
    assert plan(seconds=3.0, warmup=2).warmup == Budget(calls=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runs": 5, "seconds": 1.0}, "not both"),
        ({"warmup": 1, "warmup_seconds": 1.0}, "not both"),
        ({"seconds": 0.0}, r"--seconds\) must be a finite number > 0"),
        ({"seconds": float("nan")}, r"--seconds\) must be a finite number > 0"),
        ({"warmup_seconds": -1.0}, r"--warmup-seconds\) must be a finite number >= 0"),
        ({"mode": "fast"}, "unknown mode 'fast'"),
    ],
)
def test_contradictory_or_bad_budgets_are_refused(
    artifact: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(BenchError, match=message):
        bench(artifact, "onnxruntime", batches=(1,), **kwargs)


def test_tensorrt_throughput_is_refused_before_loading_anything(artifact: Path) -> None:
    with pytest.raises(BenchError, match="not available for TensorRT"):
        bench(artifact, "trt", mode="throughput", seconds=0.1)


def test_onnxruntime_throughput_runs_one_session_per_stream(artifact: Path) -> None:
    report = bench(
        artifact, "onnxruntime", batches=(2,), mode="throughput", **{**QUICK, "threads": 2}
    )
    row = report["results"][0]
    assert report["mode"] == "throughput" and "each stream" in report["timer"]
    assert row["streams"] == 2 and row["runtime_settings"]["intra_op_threads"] == 1
    assert row["calls"] > 0
    assert row["throughput"] == row["images_per_s"]
    assert row["images_per_s"] == pytest.approx(2 * row["calls"] / row["duration_s"], rel=1e-2)
    counted = bench(artifact, "onnxruntime", batches=(1,), mode="throughput", threads=2, runs=7)
    assert counted["results"][0]["calls"] == 7  # a call budget is shared by the streams


@pytest.mark.openvino
def test_openvino_hints_and_throughput_mode(artifact: Path) -> None:
    pytest.importorskip("openvino")
    latency = bench(artifact, "openvino", batches=(1,), **QUICK)["results"][0]
    assert latency["runtime_settings"]["performance_hint"] == "LATENCY"
    assert latency["runtime_settings"]["inference_precision"] == "f32"
    assert latency["streams"] == 1 and latency["calls"] > 0
    # p50 is OpenVINO's own timer of each call; the wall clock around the call contains it.
    assert latency["wall_p50_ms"] >= latency["p50_ms"] > 0
    report = bench(artifact, "openvino", batches=(2,), mode="throughput", **QUICK)
    row = report["results"][0]
    assert row["runtime_settings"]["performance_hint"] == "THROUGHPUT"
    assert row["streams"] >= 1 and row["calls"] > 0 and row["p50_ms"] > 0
    assert row["images_per_s"] == pytest.approx(2 * row["calls"] / row["duration_s"], rel=1e-2)
    counted = bench(artifact, "openvino", batches=(1,), mode="throughput", threads=1, runs=9)
    assert counted["results"][0]["calls"] == 9


def test_timing_loops_honour_call_budgets_and_surface_errors() -> None:
    calls: list[int] = []
    one = sequential(lambda: calls.append(1), Budget(calls=4))
    assert one.calls == 4 == len(calls) == len(one.times_ms)
    assert sequential(lambda: None, Budget(calls=0)).calls == 0
    assert sequential(lambda: None, Budget(seconds=1e-9)).calls == 1  # at least one call
    hits = [0, 0]

    def stream(i: int) -> Any:
        def call() -> None:
            hits[i] += 1

        return call

    both = parallel([stream(0), stream(1)], Budget(calls=11))
    assert both.calls == 11 == sum(hits) and both.streams == 2

    def broken() -> None:
        raise RuntimeError("runtime failed")

    with pytest.raises(RuntimeError, match="runtime failed"):
        parallel([broken, broken], Budget(seconds=0.05))


def test_bench_cli_time_budget_and_throughput_flags(artifact: Path, tmp_path: Path) -> None:
    from patrol_compress.cli.app import app

    runner = CliRunner()
    out = tmp_path / "tput.json"
    ok = runner.invoke(
        app,
        [
            "bench",
            str(artifact),
            "--batch",
            "1",
            "--threads",
            "1",
            "--mode",
            "throughput",
            "--seconds",
            "0.2",
            "--warmup-seconds",
            "0",
            "--json",
            str(out),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "throughput mode, 0.2 s timed" in ok.output
    report = json.loads(out.read_text())
    assert (report["mode"], report["seconds"], report["warmup_seconds"]) == ("throughput", 0.2, 0.0)
    assert report["runs"] is None and report["results"][0]["calls"] > 0
    for args, message in [
        (["--seconds", "0"], "--seconds) must be a finite number > 0"),
        (["--seconds", "inf"], "--seconds) must be a finite number > 0"),
        (["--runs", "5", "--seconds", "1"], "not both"),
        (["--warmup", "1", "--warmup-seconds", "1"], "not both"),
        (["--warmup-seconds", "-1"], "must be a finite number >= 0"),
        (["--mode", "fast"], "--mode 'fast'"),
    ]:
        bad = runner.invoke(app, ["bench", str(artifact), "--batch", "1", *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert message in bad.output and bad.output.strip().count("\n") == 0, bad.output
