"""Crash safety: a run killed at any moment resumes to the result it would have had.

The end-to-end test kills a run with SIGKILL in the middle of a PATROL epoch
(at an exact step, through ``PATROL_FAULT``: never sleep-then-signal, which
depends on the machine's speed) and resumes it; on CPU with one thread every
computation is deterministic, so the resumed run must end with *exactly* the
uninterrupted run's weights and metrics (tolerance 0). That holds only if a
checkpoint restores everything the remaining epochs depend on: weights, Adam,
FISTA (iterate, momentum, caps), the surrogate and its Adam, every random
generator, and where the P x K sampler stands (the surrogate's fit at an
epoch's start reuses the previous epoch's batch order).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from patrol_compress.io import sha256_file
from patrol_compress.train import checkpoint
from patrol_compress.train.checkpoint import load_checkpoint, save_checkpoint
from patrol_compress.train.faults import FAULT_ENV, FaultSpecError, InjectedFault, parse_fault
from patrol_compress.train.loop import EpochReporter, restore_rng, rng_state, run_stage

from .helpers import tiny_recipe_dict, write_recipe


def test_every_random_generator_is_restored() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    saved = rng_state()
    first = (np.random.rand(3).tolist(), random.random(), random.gauss(0, 1))
    restore_rng(saved)
    assert (np.random.rand(3).tolist(), random.random(), random.gauss(0, 1)) == first


class _Killed(BaseException):
    """Stands for the process dying (nothing after it runs)."""


def _state(epoch: int) -> tuple[torch.nn.Linear, torch.optim.Adam]:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(float(epoch))
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_killed_while_writing_keeps_the_last_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt = _state(1)
    save_checkpoint(tmp_path, 1, {"m": model}, {"o": opt})
    kept = model.weight.detach().clone()

    # Dies half-way through writing epoch 2's tensors: the temporary file goes,
    # last.json still names epoch 1.
    def torn(tensors: dict[str, torch.Tensor], path: str) -> None:
        Path(path).write_bytes(b"half a file")
        raise _Killed

    model2, opt2 = _state(2)
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_file", torn)
        with pytest.raises(_Killed):
            save_checkpoint(tmp_path, 2, {"m": model2}, {"o": opt2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.safetensors", "last.json"]

    # Dies after epoch 2's tensors are complete but before last.json names them.
    with monkeypatch.context() as m:

        def no_json(*args: object, **kwargs: object) -> None:
            raise _Killed

        m.setattr(checkpoint, "write_json", no_json)
        with pytest.raises(_Killed):
            save_checkpoint(tmp_path, 2, {"m": model2}, {"o": opt2})
    fresh, fresh_opt = _state(7)
    got = load_checkpoint(tmp_path, {"m": fresh}, {"o": fresh_opt})
    assert got is not None and got[0] == 1
    assert torch.equal(fresh.weight, kept)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _cli(recipe: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "patrol_compress",
        "prune",
        str(recipe),
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]


def _epoch(last_json: Path) -> int:
    """Epochs the checkpoint holds (0 before the first; written atomically, so readable)."""
    return int(json.loads(last_json.read_text())["epoch"]) if last_json.exists() else 0


_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_killed_mid_epoch_resumes_to_identical_results(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path, epochs=3)
    recipe = write_recipe(tmp_path, data)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(
        _cli(recipe, "--out", str(straight)), env=_ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # Killed after the first step of PATROL's third epoch (the process SIGKILLs
    # itself there, whatever the machine's speed): resuming at an epoch > 1 is
    # what needs the sampler's position (the surrogate's fit reuses the previous
    # epoch's order).
    died = subprocess.run(
        _cli(recipe, "--out", str(killed)),
        env={**_ENV, FAULT_ENV: "patrol:3:1"},
        capture_output=True,
        timeout=300,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr
    marker = killed / "checkpoints" / "patrol" / "last.json"
    stages = json.loads((killed / "stages.json").read_text())
    assert "target" in stages and "patrol" not in stages
    assert _epoch(marker) == 2
    target_stamp = (killed / "target" / "model.safetensors").stat().st_mtime_ns

    done = subprocess.run(
        _cli(recipe, "--out", str(killed), "--resume"),
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (killed / "target" / "model.safetensors").stat().st_mtime_ns == target_stamp

    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("accuracy", "edge", "removal", "mask_sparsity", "surrogate_psnr", "budget"):
        assert a[key] == b[key], key  # exact: tolerance 0
    for name in ("patrol/masked.safetensors", "pruned/model.safetensors", "model.safetensors"):
        assert sha256_file(straight / name) == sha256_file(killed / name), name


def test_fault_hook_fails_at_the_exact_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PATROL_FAULT stops a stage right after the named step, before that epoch's checkpoint."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[tuple[int, int]] = []

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        for i in range(3):
            seen.append((epoch + 1, i + 1))
            rep.step(1, {"loss": 0.5})

    monkeypatch.setenv(FAULT_ENV, "patrol:2:2:raise")
    with pytest.raises(InjectedFault, match="patrol epoch 2 step 2"):
        run_stage("patrol", tmp_path, 3, 3, epoch_fn, {"m": model}, {"o": opt}, False, quiet=True)
    assert seen == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert _epoch(tmp_path / "last.json") == 1  # epoch 2's checkpoint was never written
    monkeypatch.setenv(FAULT_ENV, "train:1:1:raise")  # another stage's fault: no effect
    run_stage("patrol", tmp_path, 3, 3, epoch_fn, {"m": model}, {"o": opt}, True, quiet=True)
    assert _epoch(tmp_path / "last.json") == 3


@pytest.mark.parametrize("spec", ["patrol", "patrol:x:1", "patrol:0:1", "patrol:1:1:explode"])
def test_malformed_fault_spec_is_refused(spec: str) -> None:
    """A typo must not silently disable the fault (the test would then pass for nothing)."""
    with pytest.raises(FaultSpecError, match="STAGE:EPOCH:STEP"):
        parse_fault(spec)


@pytest.mark.parametrize("stage", ["recovery", "demo", "target"])
def test_unknown_fault_stage_is_refused(stage: str) -> None:
    """A stage that never runs would never fire (recovery's stage is ``recover``)."""
    with pytest.raises(FaultSpecError, match=f"unknown stage '{stage}'.*train, patrol, recover"):
        parse_fault(f"{stage}:1:1")
