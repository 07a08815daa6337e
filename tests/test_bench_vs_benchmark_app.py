"""benchmarks/bench_vs_benchmark_app.py: both tools run with the same settings, ratios recorded."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from patrol_compress.exporters import export_partitions
from patrol_compress.models import build_model
from patrol_compress.recipe import ModelConfig

from .helpers import load_benchmark

# The lines of a real benchmark_app 2026.4 log that the script reads.
LOG = """\
[ INFO ]   NUM_STREAMS: 1
[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'float32'>
[ INFO ]   PERFORMANCE_HINT: LATENCY
[ INFO ] Count:            13043 iterations
[ INFO ] Duration:         5000.25 ms
[ INFO ]    Median:        327.42 us
[ INFO ]    Average:       1.25 ms
[ INFO ] Throughput:   2608.47 FPS
"""


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_benchmark("bench_vs_benchmark_app")


def test_log_parser_reads_units_and_settings(script: ModuleType) -> None:
    parsed = script.parse_benchmark_app(LOG)
    assert parsed["median_ms"] == pytest.approx(0.32742)
    assert parsed["average_ms"] == pytest.approx(1.25)
    assert (parsed["count"], parsed["fps"]) == (13043, 2608.47)
    assert parsed["settings"] == {
        "performance_hint": "LATENCY",
        "num_streams": "1",
        "inference_num_threads": "2",
        "inference_precision_hint": "float32",
    }
    with pytest.raises(ValueError, match="Median"):
        script.parse_benchmark_app(LOG.replace("Median", "Middle"))


def test_tool_command_matches_bench_settings(script: ModuleType) -> None:
    cmd = script.tool_command("ba", Path("edge.xml"), [8, 3, 32, 32], 2, None, True)
    assert cmd[cmd.index("-shape") + 1] == "[8,3,32,32]"
    assert cmd[cmd.index("-infer_precision") + 1] == "f32"
    assert cmd[cmd.index("-hint") + 1] == "latency" and cmd[cmd.index("-t") + 1] == "2"
    pinned = script.tool_command("ba", Path("edge.xml"), [1, 3, 32, 32], 2, 1, True)
    assert pinned[pinned.index("-nthreads") + 1] == "1"
    assert pinned[pinned.index("-nstreams") + 1] == "1" and "sync" in pinned
    plain = script.tool_command("ba", Path("edge.xml"), [1, 3, 32, 32], 2, None, False)
    assert "-hint" not in plain and "-infer_precision" not in plain


@pytest.mark.openvino
@pytest.mark.slow
def test_script_runs_both_tools_and_writes_ratios(script: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = build_model(ModelConfig(width=0.125, stem="small"), num_classes=10).eval()
    artifact = tmp_path / "ov"
    export_partitions(model, 2, artifact, "openvino", "fp32", (3, 32, 32))
    out = tmp_path / "results"
    argv = [str(artifact), "--batches", "1", "--seconds", "1", "--repeats", "1"]
    argv += ["--threads", "1", "--out", str(out)]
    assert script.main(argv) == 0
    report = json.loads((out / "bench_vs_benchmark_app.json").read_text())
    (summary,) = report["summary"]
    sample = report["samples"][0]
    assert summary["batch"] == 1 and summary["ratio"] > 0
    assert summary["ratio"] == pytest.approx(
        sample["ours"]["p50_ms"] / sample["tool"]["median_ms"], rel=1e-2
    )
    assert sample["ours"]["settings"]["performance_hint"] == "LATENCY"
    assert sample["ours"]["settings"]["inference_precision"] == "f32"
    assert sample["tool"]["settings"]["inference_precision_hint"] == "float32"
    assert sample["tool"]["settings"]["inference_num_threads"] == "1"
    assert sample["ours"]["settings"]["inference_num_threads"] == "1"
    assert "tool_defaults" in sample and "ours_over_tool_defaults" in summary
    assert "| 1 |" in (out / "bench_vs_benchmark_app.md").read_text()
