"""Provenance names the commit and, when the tree differs from it, which tracked files do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from patrol_compress.frontier.run import _provenance_lines
from patrol_compress.provenance import git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_dirty_paths_name_the_changed_tracked_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "result.md").write_text("old\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    clean = git_commit(tmp_path)
    assert clean["dirty"] is False and clean["dirty_paths"] == []
    (tmp_path / "result.md").write_text("new\n")
    (tmp_path / "untracked.txt").write_text("not part of the tree\n")
    dirty = git_commit(tmp_path)
    assert dirty["commit"] == clean["commit"]
    assert dirty["dirty"] is True and dirty["dirty_paths"] == ["result.md"]


def test_frontier_provenance_lines_say_which_files_differed() -> None:
    def record(dirty: bool, paths: list[str] | None) -> dict[str, object]:
        prov = {"device": {"cpu": "cpu"}, "commit": "a" * 40, "dirty": dirty}
        if paths is not None:
            prov["dirty_paths"] = paths
        return {"provenance": prov}

    lines = _provenance_lines(
        {
            "records": [
                record(False, []),
                record(True, ["benchmarks/results/x.md"]),
                record(True, None),
            ]
        }
    )
    assert "- points made on cpu at commit aaaaaaaaaa" in lines
    assert any(
        line.endswith("(with uncommitted changes to benchmarks/results/x.md)") for line in lines
    )
    assert any(line.endswith("(with uncommitted changes)") for line in lines)


def test_provenance_names_the_commit_the_process_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result written after later commits landed names the code it ran, and where the tree
    had moved to by the time it was written."""
    from patrol_compress import provenance as prov

    now = git_commit()
    assert prov.provenance("cmd")["commit"] == prov.loaded_commit()["commit"]
    earlier = {"commit": "b" * 40, "dirty": False, "dirty_paths": []}
    monkeypatch.setattr(prov, "_LOADED", earlier)
    record = prov.provenance("cmd")
    assert record["commit"] == "b" * 40 and record["dirty"] is False
    assert record["commit_when_written"] == now
    monkeypatch.setattr(prov, "_LOADED", now)
    assert "commit_when_written" not in prov.provenance("cmd")
