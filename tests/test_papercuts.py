"""The papercuts a new user hit: what the CLI prints and what a run keeps."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from patrol_compress.cli.app import app
from patrol_compress.privacy_config import AttackConfig
from patrol_compress.train.loop import EpochReporter, run_stage

from .helpers import tiny_recipe_dict, write_recipe

runner = CliRunner()


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


# --------------------------------------------------------------------------- CLI options


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _fake_defend(seen: dict[str, Any]) -> Any:
    def defend(run_dir: Path, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs, threads=torch.get_num_threads())
        return {"points": [], "split": 2}

    return defend


def test_defend_config_is_the_attack_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import patrol_compress.defenses

    seen: dict[str, Any] = {}
    monkeypatch.setattr(patrol_compress.defenses, "defend", _fake_defend(seen))
    settings = tmp_path / "attack.yaml"
    settings.write_text("blackbox: {epochs: 3}\nwhitebox: {steps: 7}\n")
    result = cli("defend", tmp_path / "run", "--config", settings, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert isinstance(seen["config"], AttackConfig)
    assert (seen["config"].blackbox.epochs, seen["config"].whitebox.steps) == (3, 7)
    assert seen["threads"] == 1


def test_defend_config_with_a_bad_value_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import patrol_compress.defenses

    seen: dict[str, Any] = {}
    monkeypatch.setattr(patrol_compress.defenses, "defend", _fake_defend(seen))
    settings = tmp_path / "attack.yaml"
    settings.write_text("blackbox: {epochs: 0}\n")
    line = one_error_line(cli("defend", tmp_path / "run", "--config", settings))
    assert "blackbox.epochs" in line and str(settings) in line
    assert not seen  # refused before the sweep started


@pytest.mark.parametrize("command", ["export", "attack", "defend"])
def test_threads_on_every_command_that_computes(tmp_path: Path, command: str) -> None:
    from patrol_compress.machine import usable_cores

    extra = ("--target", "onnx") if command == "export" else ()
    for value in ("0", str(usable_cores() + 1)):
        line = one_error_line(cli(command, tmp_path / "run", *extra, "--threads", value))
        assert line.startswith(f"error: --threads {value}: expected 1..")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("threads", ["1", ""])
def test_make_demo_passes_threads(tmp_path: Path, threads: str) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["make", "-n", "-C", str(root), "demo", f"THREADS={threads}", f"RUN={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if "patrol-compress " in line]
    assert [line.split()[1] for line in commands] == ["prune", "export"]
    for line in commands:
        assert (f"--threads {threads}" if threads else "--threads") in line or not threads, line
        assert "--threads" not in line or threads, line


# --------------------------------------------------------------------------- checkpoints


def _fake_checkpoints(run: Path) -> None:
    for stage in ("target", "patrol", "recover"):
        folder = run / "checkpoints" / stage
        folder.mkdir(parents=True)
        (folder / "last.json").write_text("{}")
        (folder / "epoch-0002.safetensors").write_bytes(b"x")
    (run / "checkpoints" / "patrol" / "mine.txt").write_text("a user's note")


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        ("all", ["patrol/epoch-0002.safetensors", "patrol/last.json", "patrol/mine.txt",
                 "recover/epoch-0002.safetensors", "recover/last.json",
                 "target/epoch-0002.safetensors", "target/last.json"]),
        ("last", ["patrol/mine.txt", "recover/epoch-0002.safetensors", "recover/last.json"]),
        ("none", ["patrol/mine.txt"]),
    ],
)  # fmt: skip
def test_drop_checkpoints_keeps_what_was_asked_and_the_users_files(
    tmp_path: Path, keep: str, left: list[str]
) -> None:
    from patrol_compress.train.checkpoint import drop_checkpoints

    _fake_checkpoints(tmp_path)
    drop_checkpoints(tmp_path, keep)
    root = tmp_path / "checkpoints"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == left


def test_prune_keep_checkpoints_last_keeps_one_and_the_run_still_resumes(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path, epochs=1, recovery_epochs=1)
    data["train"]["epochs"] = 1
    recipe = write_recipe(tmp_path, data)
    run = tmp_path / "run"
    result = cli("prune", recipe, "--quiet", "--keep-checkpoints", "last")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["recover"]
    assert (run / "checkpoints" / "recover" / "last.json").is_file()
    before = {p: p.read_bytes() for p in run.rglob("*.safetensors")}
    again = cli("prune", recipe, "--quiet", "--resume", "--keep-checkpoints", "none")
    assert again.exit_code == 0, again.output
    assert not (run / "checkpoints").exists()
    assert {p: p.read_bytes() for p in run.rglob("*.safetensors")} == {
        p: b for p, b in before.items() if "checkpoints" not in p.parts
    }


# --------------------------------------------------------------------------- item 11 leftovers


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e30", "soon"])
def test_bad_dist_timeout_is_one_line(tmp_path: Path, value: str) -> None:
    env = {"WORLD_SIZE": "2", "RANK": "0", "PATROL_DIST_TIMEOUT": value}
    result = runner.invoke(app, ["train", str(tmp_path / "r.yaml")], env=env)
    line = one_error_line(result)
    assert line.startswith(f"error: PATROL_DIST_TIMEOUT={value!r}"), line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny prune run (one epoch per stage)."""
    from patrol_compress.pipeline import prune
    from patrol_compress.recipe import parse_recipe

    root = tmp_path_factory.mktemp("finished")
    data = tiny_recipe_dict(root, epochs=1, recovery_epochs=1)
    data["train"]["epochs"] = 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prune(parse_recipe(data), quiet=True)
    finally:
        torch.set_num_threads(before)
    return root / "run"


def _resume_after_patrol(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the run as if it had stopped right after the PATROL stage."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    stages = json.loads((run / "stages.json").read_text())
    names = list(stages)
    kept = {k: stages[k] for k in names[: names.index("patrol") + 1]}
    (run / "stages.json").write_text(json.dumps(kept))
    return run


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_masked_weights_on_resume_is_one_line(
    finished_run: Path, tmp_path: Path, damage: str
) -> None:
    run = _resume_after_patrol(finished_run, tmp_path)
    masked = run / "patrol" / "masked.safetensors"
    data = masked.read_bytes()
    masked.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage]
    )
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    line = one_error_line(cli("prune", recipe, "--out", run, "--resume", "--quiet"))
    assert line == f"error: {masked}: cannot read weights (SafetensorError)", line


def test_patrol_summary_without_its_keys_on_resume_is_one_line(
    finished_run: Path, tmp_path: Path
) -> None:
    run = _resume_after_patrol(finished_run, tmp_path)
    (run / "patrol" / "summary.json").write_text('{"history": []}')
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    line = one_error_line(cli("prune", recipe, "--out", run, "--resume", "--quiet"))
    assert "summary.json: lacks mask_sparsity/surrogate_psnr" in line


@pytest.mark.parametrize(
    "command", ["prune", "train", "export", "attack", "defend", "report", "bench"]
)
def test_out_whose_name_is_not_utf8_is_one_line(tmp_path: Path, command: str) -> None:
    # What Python makes of the argument bytes b"out\xff" on Linux (surrogateescape).
    bad = tmp_path / "out\udcff"
    recipe = write_recipe(tmp_path, tiny_recipe_dict(tmp_path))
    missing = tmp_path / "missing"
    args: dict[str, tuple[object, ...]] = {
        "prune": ("prune", recipe, "--out", bad),
        "train": ("train", recipe, "--out", bad),
        "export": ("export", missing, "--target", "onnx", "--out", bad),
        "attack": ("attack", missing, "--out", bad),
        "defend": ("defend", missing, "--out", bad),
        "report": ("report", missing, "--out", tmp_path / "r\udcff.html"),
        "bench": ("bench", missing, "--json", tmp_path / "b\udcff.json"),
    }
    option = "--json" if command == "bench" else "--out"
    line = one_error_line(cli(*args[command]))
    assert line.startswith(f"error: {option} {tmp_path}/") and "\\udcff" in line, line
    assert line.endswith(": the name is not valid UTF-8; choose a UTF-8 path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("command", ["validate", "prune"])
@pytest.mark.parametrize(
    "data",
    [
        {"num_identities": 100_000, "num_cameras": 64, "images_per_camera": 64},
        {"num_identities": 20_000, "num_cameras": 16, "images_per_camera": 8, "image_size": 256},
    ],
)
def test_absurd_generated_dataset_sizes_are_one_line(
    tmp_path: Path, command: str, data: dict[str, int]
) -> None:
    recipe = tiny_recipe_dict(tmp_path)
    recipe["data"].update(data)
    path = write_recipe(tmp_path, recipe)
    result = cli(command, path)
    if command == "validate":  # validate's own format: "FILE: field: problem", one per problem
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        line = lines[0].removeprefix(f"{path}: ")
    else:
        line = one_error_line(result).removeprefix(f"error: {path}: ")
    assert line.startswith("data: the generated dataset would hold"), line
    assert "at most 16 GiB" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # no run, no cache


@pytest.fixture(scope="module")
def artifact(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from patrol_compress.exporters import export_run

    out = tmp_path_factory.mktemp("export") / "onnx-split2-fp32"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_run(finished_run, 2, "onnx", out=out)
    finally:
        torch.set_num_threads(before)
    return out


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ([3, 100_000, 100_000], "one image would take 111.8 GiB (at most 4 GiB)"),
        ([-3, 32, 32], "expected positive sizes"),
        ([3, 0, 32], "expected positive sizes"),
        ([3, 16, 16], "the edge partition does not run on input shape [1, 3, 16, 16]"),
        ([1, 32, 32], "the edge partition does not run on input shape [1, 1, 32, 32]"),
    ],
)
def test_bench_input_shape_the_model_does_not_take_is_one_line(
    artifact: Path, tmp_path: Path, shape: list[int], words: str
) -> None:
    copy = Path(shutil.copytree(artifact, tmp_path / "art"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input_shape"] = shape
    (copy / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(cli("bench", copy, "--batch", "1", "--runs", "1", "--warmup", "0"))
    assert words in line, line


# --------------------------------------------------------------------------- item 12 leftovers


@pytest.mark.parametrize("where", ["edge", "cloud"])
def test_export_of_nan_weights_says_torch_is_not_finite_either(
    finished_run: Path, tmp_path: Path, where: str
) -> None:
    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    weights = run / "model.safetensors"
    state = load_file(str(weights))
    name = next(
        k for k in state if k.endswith("conv1.weight") and ("layer4" in k) == (where == "cloud")
    )
    state[name][0].fill_(float("nan"))
    save_file(state, str(weights))
    info = json.loads((run / "model.json").read_text())
    info["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (run / "model.json").write_text(json.dumps(info))
    line = one_error_line(cli("export", run, "--target", "onnx", "--split", "2"))
    assert f"torch's own {where} output is NaN/Inf" in line and "non-finite" in line, line
    assert "is finite" not in line
    assert not (run / "export").exists()


def test_parity_with_a_non_finite_reference_does_not_call_it_finite() -> None:
    import numpy as np

    from patrol_compress.errors import ExportError
    from patrol_compress.exporters.parity import check_parity

    ref = np.array([1.0, np.nan], dtype=np.float32)
    with pytest.raises(ExportError, match="torch's own output has NaN/Inf"):
        check_parity("edge.onnx", ref.copy(), ref, "fp32")


def _leftovers(run: Path) -> list[Path]:
    tmp = (
        run / "checkpoints" / "recover" / ".patrol-compress-tmp.epoch-0001.safetensors.a1B2c3D4.tmp"
    )
    tmp.write_bytes(b"half a checkpoint")
    partial = run / "export" / ".patrol-compress-tmp.onnx-split2-fp32.Zz9_yY8x.partial"
    partial.mkdir(parents=True)
    (partial / "edge.onnx").write_bytes(b"half an export")
    return [tmp, partial]


def test_resume_removes_a_killed_runs_tmp_and_partial_leftovers(
    finished_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    stale = _leftovers(run)
    # A user's dot-files, some shaped like the temporary names we used to write
    # (".NAME.<8 characters>.tmp|partial"): not ours, so they stay.
    mine = [run / "export" / ".my-notes.tmp", run / "target" / ".my.notes.12345678.tmp"]
    for path in mine:
        path.write_text("keep")
    folder = run / "export" / ".backup.keepthis.partial"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    result = cli("prune", recipe, "--out", run, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert [p for p in stale if p.exists()] == []
    assert [p.read_text() for p in mine] == ["keep", "keep"]
    assert (folder / "notes.txt").read_text() == "keep"


def test_export_into_the_run_removes_a_killed_exports_partial(
    finished_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    _, partial = _leftovers(run)
    mine = run / "export" / ".keepthis.abcdefgh.partial"  # a user's folder, not ours
    mine.mkdir()
    result = cli("export", run, "--target", "onnx", "--split", "2")
    assert result.exit_code == 0, result.output
    assert not partial.exists() and mine.is_dir()
    assert sorted(p.name for p in (run / "export").iterdir()) == [mine.name, "onnx-split2-fp32"]


def test_a_ctrl_c_burst_is_one_line_without_an_atexit_traceback(tmp_path: Path) -> None:
    """Three SIGINTs at an exact step (PATROL_FAULT ...:int): now, while unwinding, at exit."""
    import os

    from patrol_compress.train.faults import FAULT_ENV

    data = tiny_recipe_dict(tmp_path, epochs=0, recovery_epochs=0)
    data["train"]["epochs"] = 2
    recipe = write_recipe(tmp_path, data)
    cmd = [sys.executable, "-m", "patrol_compress", "train", str(recipe), "--quiet"]
    cmd += ["--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    died = subprocess.run(
        cmd, env={**env, FAULT_ENV: "train:2:1:int"}, capture_output=True, text=True, timeout=300
    )
    assert died.returncode == 130, died.stderr
    lines = [line for line in died.stderr.splitlines() if line.strip()]
    assert lines == ["interrupted; finished stages are kept, rerun with --resume"], died.stderr
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
