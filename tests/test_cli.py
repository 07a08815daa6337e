"""The CLI contract: commands listed, one-line errors with exit code 2, --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patrol_compress.cli.app import app

from .helpers import tiny_recipe_dict, write_recipe

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("train", "prune", "export", "bench", "attack", "report", "validate"):
        assert cmd in result.output


def test_report_of_a_missing_path_is_one_line_with_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "nowhere" in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: x\ntrain: {epochs: 0}\n", "train.epochs"),
        ("name: x\nmodel: {arch: custom}\n", "model.factory"),
        (": : :\n", "malformed YAML"),
    ],
)
def test_prune_with_bad_recipe_is_one_line_exit_2(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["prune", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


def test_impossible_budget_via_cli(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path, budget={"params": 50})
    result = runner.invoke(app, ["prune", str(write_recipe(tmp_path, data)), "--quiet"])
    assert result.exit_code == 2
    assert "cannot be met" in result.output


def test_debug_shows_traceback_without_locals(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nbogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "patrol_compress", "--debug", "prune", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr or "RecipeError" in proc.stderr
    assert "locals" not in proc.stderr.lower()


COMMANDS = ("train", "prune", "export", "bench", "attack", "defend", "report", "validate")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_flags_without_a_value_type(command: str | None) -> None:
    result = runner.invoke(app, [*([command] if command else []), "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def test_bench_runtime_choices_leave_out_torch() -> None:
    result = runner.invoke(app, ["bench", "--help"])
    assert "<onnxruntime|openvino|t" in result.output  # rich may fold the rest
    assert "torch" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "ART", "--runtime", "torch"], "--runtime 'torch': expected one of onnxruntime"),
        (["bench", "ART", "--runtime", "tflite"], "--runtime 'tflite': expected one of onnxrun"),
        (["export", "RUN", "--target", "tflite"], "--target 'tflite': expected one of onnx, open"),
        (
            ["export", "RUN", "--target", "onnx", "--precision", "int4"],
            "--precision 'int4': expected one of fp32, fp16, int8",
        ),
    ],
)
def test_choices_are_enforced_by_the_cli_in_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    # The folders do not exist: the choice is refused before the command looks at them.
    args = [str(tmp_path / a) if a in ("ART", "RUN") else a for a in args]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
