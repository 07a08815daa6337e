"""The prune job end to end on tiny generated data, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from patrol_compress.errors import BudgetError, OutputExistsError, TrainingError
from patrol_compress.models.saved import load_run_model
from patrol_compress.pipeline import prune
from patrol_compress.train.faults import FAULT_ENV

from .helpers import tiny_recipe, tiny_recipe_dict, write_recipe


def test_prune_meets_budget_and_writes_metrics(tmp_path: Path) -> None:
    metrics = prune(tiny_recipe(tmp_path), quiet=True)
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["split"] == 4
    budget = on_disk["budget"]["params"]
    assert budget == on_disk["edge"]["fit_split_unpruned"]["params"]
    assert on_disk["edge"]["after"]["params"] <= budget < on_disk["edge"]["before"]["params"]
    for when in ("before", "after"):
        assert set(on_disk["accuracy"][when]) >= {"rank1", "rank5", "rank10", "mAP", "mINP"}
        assert set(on_disk["edge"][when]) >= {"params", "weight_bytes", "macs", "bytes_sent"}
    assert on_disk["edge"]["after"]["macs"] < on_disk["edge"]["before"]["macs"]
    assert on_disk["removal"]["equivalence_rel_diff"] <= 1e-5
    assert "surrogate_psnr" in on_disk and "mask_sparsity" in on_disk
    assert metrics["edge"]["after"]["params"] == on_disk["edge"]["after"]["params"]
    # Provenance next to the outputs.
    assert (run / "recipe.resolved.yaml").is_file()
    assert "torch" in json.loads((run / "versions.json").read_text())
    # The saved pruned model reloads (no pickle) with its pruned shapes.
    model, meta = load_run_model(run)
    assert meta["split"] == 4
    assert model.layer4[1].conv2.weight.shape[0] < 64


def test_block_wise_and_ablation_switches_run(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tmp_path,
        granularity="block",
        budget=None,
        lipschitz={"enabled": False},
        adversarial={"enabled": False},
        epochs=1,
    )
    metrics = prune(recipe, quiet=True)
    assert metrics["surrogate_psnr"] is None  # no surrogate: null in metrics.json, not NaN
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert '"surrogate_psnr": null' in text and "NaN" not in text


def test_impossible_budget_fails_before_training(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, budget={"params": 50})
    with pytest.raises(BudgetError, match="cannot be met"):
        prune(recipe, quiet=True)
    assert not (tmp_path / "run" / "target").exists()


def test_masks_shrunk_to_zero_stop_before_removal(tmp_path: Path) -> None:
    """A mask learning rate far too high for the data zeroes whole blocks: the run stops
    with an error naming the knobs instead of removing every channel."""
    recipe = tiny_recipe(tmp_path, mask_lr=1.0, lambda1=10.0, recovery_epochs=1)
    with pytest.raises(TrainingError, match="patrol.mask_lr"):
        prune(recipe, quiet=True)
    assert not (tmp_path / "run" / "pruned").exists()


def test_existing_output_refused_without_force(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, epochs=0, recovery_epochs=0)
    prune(recipe, quiet=True)
    with pytest.raises(OutputExistsError, match="--force"):
        prune(recipe, quiet=True)
    foreign = tmp_path / "run" / "notes.txt"
    foreign.write_text("mine")
    prune(recipe, quiet=True, force=True)
    assert foreign.read_text() == "mine"  # --force only removes what we wrote


def test_killed_run_resumes_to_completion(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path, epochs=6)
    recipe = write_recipe(tmp_path, data)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "patrol_compress", "prune", str(recipe), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Dies (SIGKILL, sent by itself) in PATROL's second epoch, after one epoch's checkpoint.
    died = subprocess.run(
        cmd, env={**env, FAULT_ENV: "patrol:2:1"}, capture_output=True, timeout=300
    )
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert (run / "checkpoints" / "patrol" / "last.json").is_file()
    stages = json.loads((run / "stages.json").read_text())
    assert "target" in stages and "patrol" not in stages
    target_file = run / "target" / "model.safetensors"
    stamp = target_file.stat().st_mtime_ns
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = json.loads((run / "stages.json").read_text())
    assert {"target", "patrol", "remove", "recover", "evaluate"} <= set(stages)
    assert target_file.stat().st_mtime_ns == stamp  # finished stages are not rewritten
    assert json.loads((run / "metrics.json").read_text())["accuracy"]["after"]["mAP"] > 0
