"""A whole prune with MAC and measured-latency limits and round_to, then latency.py on it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

from patrol_compress.api import prune
from patrol_compress.models.saved import load_run_model

from .helpers import load_benchmark, tiny_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("latency-budget")
    recipe = tiny_recipe(
        tmp,
        round_to=4,
        # A measured limit that cannot bind keeps the plan (and the INT8 test below)
        # deterministic; fit: [latency] itself is tested in test_budget_limits.py.
        budget={
            "fit_split": 2,
            "fit": ["params", "macs"],
            "latency_ms": 1e4,
            "latency": {"runtime": "onnxruntime", "threads": 1, "batch": 1, "seconds": 0.05},
        },
    )
    prune(recipe, quiet=True)
    return tmp / "run"


def test_every_limit_is_recorded_and_holds(run: Path) -> None:
    m = json.loads((run / "metrics.json").read_text())
    b, r = m["budget"], m["removal"]
    assert b["fit_split"] == 2
    assert b["params"] == m["edge"]["fit_split_unpruned"]["params"]
    assert b["macs"] == m["edge"]["fit_split_unpruned"]["macs"]
    assert b["latency_ms"] == 1e4 and b["latency"] == {
        "runtime": "onnxruntime",
        "threads": 1,
        "batch": 1,
    }
    assert r["edge_params"] <= b["params"] and r["edge_macs"] <= b["macs"]
    assert r["edge_macs"] == m["edge"]["after"]["macs"]
    assert r["latency_ms"] is not None and 0 < r["latency_ms"] < 1e4  # measured, not predicted
    assert r["round_to"] == 4


def test_pruned_widths_are_multiples_of_round_to(run: Path) -> None:
    pruned, _ = load_run_model(run)
    target, _ = load_run_model(run / "target")
    before = {n: m.num_features for n, m in target.named_modules() if isinstance(m, nn.BatchNorm2d)}
    after = {n: m.num_features for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d)}
    changed = {n: w for n, w in after.items() if n in before and w != before[n]}
    assert changed, "nothing was pruned; the check would be empty"
    assert all(w % 4 == 0 for w in changed.values()), changed


def _latency_script() -> ModuleType:
    return load_benchmark("latency")


def test_latency_benchmark_times_the_runs_own_edges(run: Path, tmp_path: Path) -> None:
    script = _latency_script()
    argv = [
        "--pruned-run", f"mine={run}", "--seconds", "0.05", "--warmup-seconds", "0.01",
        "--repeats", "1", "--threads", "1", "--runtimes", "onnxruntime", "--batches", "1",
        "--out", str(tmp_path), "--name", "lat",
    ]  # fmt: skip
    assert script.main(argv) == 0
    report = json.loads((tmp_path / "lat.json").read_text())
    m = json.loads((run / "metrics.json").read_text())
    assert set(report["variants"]) == {"split2", "split4", "mine"}
    assert report["variants"]["mine"]["macs"] == m["edge"]["after"]["macs"]
    assert report["variants"]["split2"]["macs"] == m["edge"]["fit_split_unpruned"]["macs"]
    (row,) = report["ratios"]
    assert row["variant"] == "mine" and row["batch"] == 1
    assert row["mac_ratio_vs_split2"] == round(
        m["edge"]["after"]["macs"] / m["edge"]["fit_split_unpruned"]["macs"], 3
    )
    assert row["meets_goal"] == (row["latency_ratio_vs_split2"] <= 0.8)
    md = (tmp_path / "lat.md").read_text()
    assert "round_to 4" in md and "latency measured while planning" in md


def test_latency_benchmark_times_int8_beside_fp32(run: Path, tmp_path: Path) -> None:
    """--int8 exports the run as users do (parity enforced) and prints INT8 / fp32 per runtime."""
    script = _latency_script()
    argv = [
        "--pruned-run", f"mine={run}", "--seconds", "0.05", "--warmup-seconds", "0.01",
        "--repeats", "1", "--threads", "1", "--batches", "1", "--int8",
        "--calibration-images", "16", "--allow-parity-fail", "--out", str(tmp_path),
        "--name", "lat",
    ]  # fmt: skip
    assert script.main(argv) == 0
    report = json.loads((tmp_path / "lat.json").read_text())
    q = report["int8_ratios"]
    assert {(r["variant"], r["runtime"]) for r in q} == {
        ("mine", "onnxruntime"),
        ("mine", "openvino"),
    }
    for r in q:
        assert r["int8_over_fp32"] == round(r["int8_ms"] / r["fp32_ms"], 3)
    sent = report["variants"]
    assert sent["mine-int8"]["bytes_sent"] * 4 == sent["mine"]["bytes_sent"]  # uint8 uplink
    int8 = report["pruned_sources"]["mine"]["int8"]
    assert set(int8) == {"onnxruntime", "openvino"}
    assert "INT8" in (tmp_path / "lat.md").read_text()
