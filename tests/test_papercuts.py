"""The papercuts a new user hit: what the CLI prints and what a run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patrol_compress.train.loop import EpochReporter, run_stage


def test_output_that_is_not_a_terminal_gets_log_lines_and_no_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def epoch(index: int, reporter: EpochReporter) -> None:
        for _ in range(3):
            reporter.step(4, {"loss": 1.0})

    run_stage("demo", tmp_path, 2, 3, epoch, {"m": model}, {"m": optimizer}, resume=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == [line for line in lines if line.startswith("[demo] epoch ")], (
        lines
    )  # no "demo 1/2 ━━━ 3/3" bar rows
    assert len(lines) == 2
