"""examples/own_training_loop.py runs as a user would run it, on one thread.

Its speed (about 30 s here, the issue asks for under 2 minutes) is measured, not
asserted: a wall-clock bound in a test passes on one machine and fails on a
slower one. The subprocess timeout only stops a hang.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import patrol_compress
from patrol_compress.pruner import PatrolPruner

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_training_loop.py"


def test_pruner_is_in_the_package() -> None:
    assert patrol_compress.PatrolPruner is PatrolPruner


@pytest.mark.slow
def test_own_training_loop_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path / "onnx"), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
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
