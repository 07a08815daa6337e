"""``patrol-compress frontier``: plans checked before work, comparisons that say what they are.

The arithmetic (envelope, margin on the common range, the hierarchical
bootstrap) on hand-made records; the plan's one-line refusals; and one real
frontier on a tiny recipe, run as the benchmark launcher runs it (targets,
two shards at once, collect), whose results carry per-point provenance and a
command that reproduces them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from patrol_compress.cli.app import app
from patrol_compress.frontier import FrontierError, Knob, Point, Record, compare, point_recipe
from patrol_compress.frontier.compare import frontier, margin
from patrol_compress.frontier.plan import parse_knobs
from patrol_compress.frontier.run import Job, shard_jobs
from patrol_compress.recipe import load_recipe

from .helpers import tiny_recipe_dict

ROOT = Path(__file__).resolve().parent.parent


def rec(method: str, value: float, seed: int, target: int, acc: float, psnr: float) -> Record:
    rng = np.random.default_rng(seed * 10 + target)
    per_image = list(psnr + rng.normal(0, 0.1, 20))
    return Record(method, value, seed, target, acc, per_image, [psnr / 40] * 20)


def test_frontier_keeps_the_lower_envelope() -> None:
    pts = [(0.80, 18.0), (0.85, 19.0), (0.84, 21.0), (0.90, 22.0)]
    assert frontier(pts) == [(0.80, 18.0), (0.85, 19.0), (0.90, 22.0)]


def test_margin_over_the_common_range_only() -> None:
    base = [(0.80, 20.0), (0.90, 22.0)]
    assert margin(base, [(0.85, 19.0), (0.95, 19.0)]) == pytest.approx(2.5, abs=0.01)
    assert margin(base, [(0.95, 18.0), (0.97, 18.0)]) is None


def _replicated(shift_acc: float, shift_psnr: float) -> list[Record]:
    out = []
    for t in (0, 1):
        for s in (0, 1):
            for value, acc, psnr in ((4, 0.88, 16.0), (8, 0.90, 17.0)):
                a = acc + 0.002 * s + 0.003 * t
                out.append(rec("pruning-only", value, s, t, a, psnr + 0.1 * t))
                out.append(rec("uplink", value, s, t, a + shift_acc, psnr + shift_psnr))
    return out


def test_matched_accuracy_margin_with_an_interval_over_targets_seeds_and_images() -> None:
    c = compare(_replicated(0.0, -2.0), "psnr", "pruning-only", "uplink", n_boot=200)
    assert c["matched_accuracy"] and c["margin"] == pytest.approx(2.05, abs=0.1)
    lo, hi = c["interval"]
    assert 0 < lo <= c["margin"] <= hi
    assert "target seeds" in c["resamples"] and "evaluation images" in c["resamples"]
    assert c["basis"].startswith("common accuracy range")
    assert len(c["replicates"]["uplink"]) == 8


def test_no_margin_where_accuracy_ranges_do_not_overlap() -> None:
    """A method 20 points less accurate is not 'at matched accuracy': it is called what it is."""
    c = compare(_replicated(-0.2, 3.0), "psnr", "pruning-only", "uplink", n_boot=50)
    assert c["margin"] is None and c["interval"] is None and not c["matched_accuracy"]
    assert c["basis"].startswith("no matched accuracy: pruning-only is more accurate (mean")
    assert "leaks less" in c["basis"]


def test_single_points_compare_where_their_replicates_overlap() -> None:
    """One knob value per method: no frontier range to share, but overlapping replicate
    accuracies still make a comparison at matched accuracy, and it says on what basis."""
    records = [r for r in _replicated(0.001, -2.0) if r.value == 8]
    c = compare(records, "psnr", "pruning-only", "uplink", n_boot=100)
    assert c["matched_accuracy"] and c["margin"] == pytest.approx(2.05, abs=0.1)
    assert c["basis"].startswith("the method's points within the baseline's accuracy range")
    assert c["interval"] is not None


def test_point_recipe_sets_method_knob_seed_and_target(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert not recipe.patrol.lipschitz.enabled and not recipe.patrol.adversarial.enabled
    knob = Knob(("recovery_epochs",), (8.0,))
    r = point_recipe(recipe, Point("patrol", knob, 8.0, 3, 1), tmp_path / "w.safetensors")
    assert r.patrol.lipschitz.enabled and r.patrol.adversarial.enabled
    assert r.patrol.recovery_epochs == 8 and r.seed == 3
    assert r.train.checkpoint == tmp_path / "w.safetensors"
    with pytest.raises(FrontierError, match="integer"):
        point_recipe(recipe, Point("patrol", knob, 8.5, 0, 0), None)


def test_narrow_uplink_methods_set_bits_and_take_the_budget_knob(tmp_path: Path) -> None:
    """The narrow uplinks differ only in their code width; the knob is the uplink budget."""
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    knob = Knob(("budget", "uplink_bits"), (576.0,))
    for method, bits in (("uplink-narrow", 2), ("uplink4-narrow", 4)):
        r = point_recipe(recipe, Point(method, knob, 576.0, 0, 0), None)
        assert r.patrol.uplink.bits == bits
        assert r.patrol.budget is not None and r.patrol.budget.uplink_bits == 576
        assert not r.patrol.lipschitz.enabled and not r.patrol.adversarial.enabled
    r = point_recipe(recipe, Point("uplink-noisy-narrow", knob, 576.0, 0, 0), None)
    assert (r.patrol.uplink.bits, r.patrol.uplink.noise) == (2, 0.5)
    assert r.patrol.budget is not None and r.patrol.budget.uplink_bits == 576


def test_patrol_fit_plays_an_attacker_refitted_every_epoch(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    knob = Knob(("adversarial", "beta"), (1e-4,))
    r = point_recipe(recipe, Point("patrol-fit", knob, 1e-4, 0, 0), None)
    adv = r.patrol.adversarial
    assert r.patrol.lipschitz.enabled and adv.enabled and adv.beta == 1e-4
    assert (adv.adversary_every, adv.adversary_epochs, adv.warmup_epochs) == (1, 3, 4)


def test_shards_deal_only_the_points_not_yet_made() -> None:
    """Extending a finished frontier by four points gives each of two shards two of them."""
    jobs: list[Job] = [(f"p{i}", (0, i)) for i in range(10)]
    made = {f"p{i}" for i in range(6)}
    shares = [shard_jobs(jobs, made.__contains__, i, 2) for i in range(2)]
    assert [[name for name, _ in share] for share in shares] == [["p6", "p8"], ["p7", "p9"]]
    assert shard_jobs(jobs, lambda _: True, 0, 2) == []


def test_knob_specs_per_method() -> None:
    knobs = parse_knobs(
        ["recovery_epochs=4,8", "patrol:adversarial.beta=1e-4,4e-4"], ["pruning-only", "patrol"]
    )
    assert knobs["pruning-only"].values == (4.0, 8.0)
    assert knobs["patrol"].path == ("adversarial", "beta")
    with pytest.raises(FrontierError, match="no knob for patrol"):
        parse_knobs(["pruning-only:recovery_epochs=4"], ["pruning-only", "patrol"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "pruning-only,patrl"], "did you mean 'patrol'"),
        (["--methods", "patrol"], "needs pruning-only"),
        (["--knob", "recovery_epoch=4,8"], "patrol has no 'recovery_epoch'"),
        (["--knob", "recovery_epochs=-1"], "recovery_epochs"),
        (["--seeds", "0"], "at least 2"),
        (["--target-seeds", "1,1"], "lists a seed twice"),
        (["--attacks", "blackbox,whitebx"], "unknown attack 'whitebx'"),
        (["--seeds", "0,x"], "expected comma-separated integers"),
    ],
)
def test_bad_plans_are_one_line_exit_2_before_any_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    work = tmp_path / "work"
    result = CliRunner().invoke(
        app, ["frontier", str(ROOT / "recipes" / "quickstart.yaml"), "--work", str(work), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not work.exists()


def _tiny_frontier_recipe(tmp_path: Path) -> Path:
    data = tiny_recipe_dict(tmp_path)
    data.pop("output_dir")
    data["train"]["epochs"] = 1
    data["patrol"].update({"epochs": 1, "recovery_epochs": 1})
    data["attack"] = {
        "max_eval_images": 8,
        "blackbox": {"families": ["upsample"], "epochs": 1, "max_images": 48, "base_width": 8},
        "recogniser": {"steps": 2, "width": 4},
    }
    data["frontier"] = {
        "methods": ["pruning-only", "patrol"],
        "knobs": ["recovery_epochs=1"],
        "seeds": [0, 1],
        "target_seeds": [0, 1],
        "references": [2],
        "attacks": ["blackbox"],
        "bootstrap": 20,
    }
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(data))
    return recipe


@pytest.mark.parametrize("stage", ["all", "targets", "points"])
def test_an_unmeetable_knob_value_is_one_line_before_any_target(tmp_path: Path, stage: str) -> None:
    """Valid for the schema, unmeetable for the model: refused before the minutes a target
    takes, naming the point and the field, whatever stage is asked for."""
    work = tmp_path / "work"
    args = ["--methods", "pruning-only,uplink-narrow", "--knob", "pruning-only:recovery_epochs=1"]
    args += ["--knob", "uplink-narrow:budget.uplink_bits=64,3", "--stage", stage]
    result = CliRunner().invoke(
        app, ["frontier", str(_tiny_frontier_recipe(tmp_path)), "--work", str(work), *args]
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert "point uplink-narrow-budget.uplink_bits3-s0-t0" in result.output
    assert "patrol.budget.uplink_bits must be at least 8" in result.output
    assert not work.exists()


@pytest.mark.slow
def test_tiny_frontier_through_the_launcher_with_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real targets, prunes and attacks: two shards at once, then the comparison."""
    recipe = _tiny_frontier_recipe(tmp_path)
    work, out, logs = tmp_path / "w", tmp_path / "res", tmp_path / "logs"
    args = ["--recipe", str(recipe), "--name", "tiny", "--work", str(work), "--out", str(out)]
    launcher = ROOT / "benchmarks" / "privacy_frontier_parallel.py"
    done = subprocess.run(
        [sys.executable, str(launcher), "--shards", "2", "--logs", str(logs), "--", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr + (logs / "collect.log").read_text()
    # 8 points (2 methods x 2 seeds x 2 targets) and 2 references, split over the shards.
    assert len(list((work / "points").glob("*/attack.json"))) == 10
    assert "point" in (logs / "shard-0.log").read_text()
    assert "point" in (logs / "shard-1.log").read_text()
    result = json.loads((out / "privacy_frontier_tiny.json").read_text())
    assert (out / result["recipe"]).read_text() == (work / "frontier.recipe.yaml").read_text()
    for r in result["records"]:
        prov = r["provenance"]
        assert {"device", "versions", "commit", "command", "recipe_sha256"} <= set(prov)
        assert prov["weights_sha256"]["target"] and prov["weights_sha256"]["pruned"]
    assert len({r["provenance"]["weights_sha256"]["target"] for r in result["records"]}) == 2
    md = (out / "privacy_frontier_tiny.md").read_text()
    assert "| pruning-only | 1 | 0/0, 0/1, 1/0, 1/1 |" in md and "split2 (reference)" in md
    assert "patrol/psnr" in result["comparisons"]

    # The recorded command parses and, at the collect stage, reproduces the comparison
    # from the finished points without making anything again.
    import patrol_compress.frontier.points as points

    def no_work(*a: Any, **k: Any) -> Any:
        raise AssertionError("a finished point was made again")

    monkeypatch.setattr(points, "ensure_prune", no_work)
    argv = shlex.split(result["command"])
    assert argv[0] == "patrol-compress" and argv[1] == "frontier"
    again = CliRunner().invoke(app, [*argv[1:], "--stage", "collect"])
    assert again.exit_code == 0, again.output
    redone = json.loads((out / "privacy_frontier_tiny.json").read_text())
    assert (
        redone["comparisons"]["patrol/psnr"]["margin"]
        == result["comparisons"]["patrol/psnr"]["margin"]
    )

    # A work folder remembers its recipe: points made under another are not mixed in.
    data = yaml.safe_load(recipe.read_text())
    data["patrol"]["mask_lr"] = 0.004
    recipe.write_text(yaml.safe_dump(data))
    changed = CliRunner().invoke(app, [*argv[1:], "--stage", "collect"])
    assert changed.exit_code == 2 and "another recipe" in changed.output


def test_launcher_refuses_its_own_options(tmp_path: Path) -> None:
    launcher = ROOT / "benchmarks" / "privacy_frontier_parallel.py"
    bad = subprocess.run(
        [sys.executable, str(launcher), "--", "--stage", "all"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--stage" in bad.stderr
