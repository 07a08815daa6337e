"""examples/own_training_loop.py runs as a user would run it: one thread, under 2 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import patrol_compress
from patrol_compress.pruner import PatrolPruner

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_training_loop.py"


def test_pruner_is_in_the_package() -> None:
    assert patrol_compress.PatrolPruner is PatrolPruner


@pytest.mark.slow
def test_own_training_loop_example_runs_in_two_minutes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path / "onnx"), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert seconds < 120, f"took {seconds:.0f} s"
    before = re.search(r"trained:\s+test accuracy ([\d.]+)%, edge .* ([\d,]+) params", out)
    after = re.search(
        r"after:\s+test accuracy ([\d.]+)%.*edge ([\d,]+) params.*budget ([\d,]+)", out
    )
    assert before and after, out
    assert float(before.group(1)) >= 90.0
    assert float(after.group(1)) >= 80.0  # accuracy kept after pruning half the edge
    edge, budget = (int(after.group(i).replace(",", "")) for i in (2, 3))
    assert edge <= budget
    assert "head kept: fc" in out and "parity max |error|" in out
    for name in ("edge.onnx", "cloud.onnx", "manifest.json"):
        assert (tmp_path / "onnx" / name).is_file()
