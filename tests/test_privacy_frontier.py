"""Benchmarks end to end: privacy_frontier (arithmetic, launcher) and schedule_noise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from patrol_compress.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    path = ROOT / "benchmarks" / "privacy_frontier.py"
    spec = importlib.util.spec_from_file_location("privacy_frontier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["privacy_frontier"] = module
    spec.loader.exec_module(module)
    return module


def test_frontier_keeps_the_lower_envelope(bench: ModuleType) -> None:
    pts = [(0.80, 15.0), (0.85, 16.0), (0.84, 17.0), (0.90, 18.0), (0.70, 16.0)]
    # (0.84, 17) is beaten by (0.85, 16); (0.70, 16) by (0.80, 15).
    assert bench.frontier(pts) == [(0.80, 15.0), (0.85, 16.0), (0.90, 18.0)]
    assert bench.interpolate(bench.frontier(pts), 0.825) == pytest.approx(15.5)


def test_margin_over_the_common_range_only(bench: ModuleType) -> None:
    base = [(0.80, 18.0), (0.90, 20.0)]
    method = [(0.85, 16.0), (0.95, 18.0)]
    # Common range 0.85..0.90: base 19..20, method 16..17 -> margin 3 everywhere.
    assert bench.margin(base, method) == pytest.approx(3.0)
    assert bench.margin(base, [(0.91, 10.0), (0.99, 11.0)]) is None


def rec(bench: ModuleType, method: str, value: float, seed: int, acc: float, psnr: float) -> Any:
    scores = [psnr - 1.0, psnr + 1.0] * 5  # mean psnr, spread over 10 images
    return bench.Record(method, value, seed, 0, acc, scores, [s / 40 for s in scores])


def test_compare_gives_a_margin_and_an_interval_that_excludes_zero(bench: ModuleType) -> None:
    records = []
    for seed, jitter in ((0, 0.0), (1, 0.2)):
        for value, acc, po, pat in (
            (4, 0.80, 18.0, 15.0),
            (8, 0.85, 19.0, 16.0),
            (12, 0.9, 20.0, 17.0),
        ):
            records.append(rec(bench, "pruning-only", value, seed, acc, po + jitter))
            records.append(rec(bench, "patrol", value, seed, acc + 0.001, pat + jitter))
    c = bench.compare(records, "psnr", "pruning-only", "patrol", n_boot=200)
    assert c["margin"] == pytest.approx(3.0, abs=0.1)
    lo, hi = c["interval"]
    assert 0 < lo <= c["margin"] <= hi
    assert c["images_resampled"] is True


def test_point_recipe_sets_method_knob_seed_and_target(bench: ModuleType, tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    r = bench.point_recipe(recipe, "pruning-only", ["recovery_epochs"], 8.0, 3, tmp_path)
    assert r.patrol.recovery_epochs == 8 and isinstance(r.patrol.recovery_epochs, int)
    assert not r.patrol.lipschitz.enabled and not r.patrol.adversarial.enabled
    assert r.seed == 3 and r.train.checkpoint == tmp_path / "model.safetensors"
    beta = bench.point_recipe(recipe, "patrol", ["adversarial", "beta"], 0.002, 0, tmp_path)
    assert beta.patrol.adversarial.beta == 0.002 and beta.patrol.adversarial.enabled


def test_knob_specs_per_method(bench: ModuleType) -> None:
    plan = bench.knobs(
        ["patrol:adversarial.beta=0.1,0.2", "pruning-only:recovery_epochs=4,8"],
        ["pruning-only", "patrol"],
    )
    assert plan["patrol"] == (["adversarial", "beta"], [0.1, 0.2])
    assert plan["pruning-only"] == (["recovery_epochs"], [4.0, 8.0])
    assert bench.knobs([], ["pruning-only", "patrol"])["patrol"][0] == ["recovery_epochs"]


def test_dominated_margin_only_where_the_baseline_is_more_accurate(bench: ModuleType) -> None:
    base = [(0.88, 16.3), (0.89, 16.7)]
    method = [(0.70, 20.0), (0.80, 19.0)]
    # No common range, baseline more accurate everywhere: held at 16.3 below 0.88;
    # the method averages 19.5 over its own range.
    assert bench.margin(base, method) is None
    assert bench.dominated_margin(base, method) == pytest.approx(-3.2)
    # The method more accurate than the baseline: nothing can be said this way.
    assert bench.dominated_margin(method, base) is None


def test_compare_says_which_basis_it_used(bench: ModuleType) -> None:
    records = []
    for seed in (0, 1):
        for value, acc, po, pat in ((4, 0.88, 16.0, 20.0), (8, 0.89, 16.5, 19.0)):
            records.append(rec(bench, "pruning-only", value, seed, acc + seed * 0.001, po))
            records.append(rec(bench, "patrol", value, seed, acc - 0.2, pat + seed * 0.1))
    c = bench.compare(records, "psnr", "pruning-only", "patrol", n_boot=100)
    assert c["basis"].startswith("baseline more accurate everywhere")
    assert c["margin"] < 0 and c["interval"][1] < 0


def test_patrol_method_is_the_papers_on_a_recipe_that_ships_without_it(
    bench: ModuleType, tmp_path: Path
) -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert not recipe.patrol.lipschitz.enabled and not recipe.patrol.adversarial.enabled
    r = bench.point_recipe(recipe, "patrol", ["recovery_epochs"], 8.0, 0, tmp_path)
    assert r.patrol.lipschitz.enabled and r.patrol.adversarial.enabled
    suite = bench.point_recipe(recipe, "adversarial-suite", ["recovery_epochs"], 8.0, 0, tmp_path)
    assert suite.patrol.adversarial.surrogate == "suite" and not suite.patrol.lipschitz.enabled


@pytest.mark.slow
def test_parallel_launcher_runs_targets_shards_and_collect(tmp_path: Path) -> None:
    """Real prunes and attacks on a tiny recipe, two shards at once, then the aggregation."""
    import subprocess

    import yaml

    from .helpers import tiny_recipe_dict

    data = tiny_recipe_dict(tmp_path)
    data.pop("output_dir")
    data["patrol"]["recovery_epochs"] = 1
    data["attack"] = {"max_eval_images": 8}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(data))
    work, out, logs = tmp_path / "w", tmp_path / "res", tmp_path / "logs"
    frontier_args = [
        "--dataset", "quickstart", "--recipe", str(recipe), "--name", "tiny",
        "--work", str(work), "--out", str(out), "--methods", "pruning-only,patrol",
        "--seeds", "0", "--knob", "recovery_epochs=1", "--attack-epochs", "1",
        "--attack-images", "64", "--whitebox-steps", "2", "--whitebox-images", "2",
        "--eval-images", "8", "--bootstrap", "20", "--attacks", "blackbox",
    ]  # fmt: skip
    launcher = ROOT / "benchmarks" / "privacy_frontier_parallel.py"
    done = subprocess.run(
        [sys.executable, str(launcher), "--shards", "2", "--logs", str(logs), "--", *frontier_args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Each shard ran its own point (index modulo 2), and the aggregation saw both.
    assert "pruning-only-recovery_epochs1" in (logs / "shard-0.log").read_text()
    assert "patrol-recovery_epochs1" in (logs / "shard-1.log").read_text()
    assert len(list((work / "tiny" / "points").glob("*/attack.json"))) == 2
    md = (out / "privacy_frontier_tiny.md").read_text()
    assert "| pruning-only | 1 | 1 |" in md and "| patrol | 1 | 1 |" in md
    # A launcher argument that would break the sharding is refused.
    bad = subprocess.run(
        [sys.executable, str(launcher), "--", *frontier_args, "--stage", "all"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--stage" in bad.stderr


def test_schedule_noise_prunes_each_value_and_seed_and_reports_spread(tmp_path: Path) -> None:
    """benchmarks/schedule_noise.py on a tiny recipe: real prunes and attacks, then the table."""
    import json
    import subprocess

    import yaml

    from patrol_compress import api

    from .helpers import tiny_recipe_dict

    data = tiny_recipe_dict(tmp_path, recovery_epochs=1)
    data.pop("output_dir")
    data["attack"] = {"max_eval_images": 8}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(data))
    api.train(recipe, out=tmp_path / "t", quiet=True)
    work, out = tmp_path / "w", tmp_path / "res"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "schedule_noise.py"),
            "--recipe",
            str(recipe),
            "--target",
            str(tmp_path / "t" / "target"),
            "--values",
            "1,2",
            "--seeds",
            "0,1",
            "--work",
            str(work),
            "--out",
            str(out),
            "--name",
            "tiny",
            "--attacks",
            "blackbox",
            "--attack-args",
            "--attack-epochs 1 --attack-images 64 --eval-images 8",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "tiny.json").read_text())
    assert [(p["value"], p["seed"]) for p in report["points"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for p in report["points"]:  # each run pruned with its value and seed, the paper's terms on
        resolved = load_recipe(
            work / f"adversary_every{p['value']}-seed{p['seed']}" / "run" / "recipe.resolved.yaml"
        )
        assert resolved.patrol.adversarial.adversary_every == p["value"]
        assert resolved.seed == p["seed"] and resolved.patrol.lipschitz.enabled
    first, second = report["summary"]
    assert first["psnr_diff"] == 0.0
    psnr = {v: [p["psnr"] for p in report["points"] if p["value"] == v] for v in (1, 2)}
    assert second["psnr_diff"] == pytest.approx(sum(psnr[2]) / 2 - sum(psnr[1]) / 2)
    assert first["psnr_spread"] == pytest.approx(max(psnr[1]) - min(psnr[1]))
    assert "Mean over seeds (seed-to-seed spread)" in (out / "tiny.md").read_text()
