"""``validate`` imports a custom model.factory and says in one line why it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from patrol_compress.cli.app import app

from .helpers import tiny_recipe_dict, write_recipe

runner = CliRunner()


def _recipe(tmp_path: Path, factory: str) -> Path:
    data = tiny_recipe_dict(tmp_path)
    data["model"] = {
        "arch": "custom",
        "factory": factory,
        "blocks": {"stem": ["conv"], "stages": [["s1"]]},
    }
    data["patrol"]["split"] = 1
    data["patrol"]["budget"] = None
    return write_recipe(tmp_path, data)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_unimportable_factory_is_one_line_naming_pythonpath(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "no_such_user_module_13:build")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "no_such_user_module_13" in line and "PYTHONPATH" in line and str(path) in line


@pytest.mark.parametrize(
    ("source", "spec", "words"),
    [
        ("def build(**kw):\n    return None\n", "user_nets_ok13:build", None),
        ("x = 1\n", "user_nets_noattr13:build", "has no callable 'build'"),
        ("def build(:\n", "user_nets_syntax13:build", "SyntaxError"),
    ],
)
def test_factory_on_the_path_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, spec: str, words: str | None
) -> None:
    (tmp_path / f"{spec.split(':')[0]}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _recipe(tmp_path, spec)
    result = runner.invoke(app, ["validate", str(path)])
    if words is None:
        assert result.exit_code == 0, result.output
        assert f"{path}: ok" in result.output
    else:
        assert result.exit_code == 2
        assert words in _one_error_line(result.output)
