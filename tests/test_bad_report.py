"""Hostile attack.json files and a failing disk through ``report`` (issue 12 items 6, 8, 11).

Like tests/test_bad_input.py: exit code 2 and one line for bad input, and the
previous report untouched whatever happens. No model, no torch: the attack.json
files are written here.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from patrol_compress.cli.app import app
from patrol_compress.report import build as report_build

runner = CliRunner()


def _score(psnr: float) -> dict[str, Any]:
    return {"images": 4, "psnr": psnr, "ssim": 0.5, "mse": 0.01, "attack_accuracy": 0.5}


def attack_json(folder: Path, **extra: Any) -> Path:
    """A minimal attack.json (the first format) with a real grid PNG next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "attack_grid.png")
    data: dict[str, Any] = {
        "run": str(folder),
        "split": 2,
        "attacks": {"blackbox": _score(20.0)},
        "mean_image": _score(12.0),
        "recogniser": {"clean_accuracy": 0.8, "chance": 0.1},
        "data": {"attacker_images": 10, "eval_images": 4},
        "grid": {"file": "attack_grid.png", "rows": ["original", "blackbox"]},
        **extra,
    }
    path = folder / "attack.json"
    path.write_text(json.dumps(data))
    return path


def report(*args: object) -> Result:
    return runner.invoke(app, ["report", *(str(a) for a in args)])


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_report_that_fails_half_way_leaves_the_old_one_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing the new report: old page, markdown, plots and grid unchanged."""
    source = attack_json(tmp_path / "results" / "a")
    out = tmp_path / "site" / "report.html"
    assert report(source, "--out", out).exit_code == 0
    (out.parent / "report_files" / "mine.txt").write_text("my notes")
    before = snapshot(out.parent)
    writes = {"n": 0}
    real = report_build._write_synced

    def full_disk(path: Path, data: bytes) -> None:
        writes["n"] += 1
        if writes["n"] == 3:  # after the plots, before the grid and pages
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(report_build, "_write_synced", full_disk)
    result = report(source, "--out", out, "--force")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "No space left on device" in lines[0] and "previous report is unchanged" in lines[0]
    assert snapshot(out.parent) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "report.html",
        "report.md",
        "report_files",
    ]


def test_force_keeps_a_users_files_in_the_assets_folder(tmp_path: Path) -> None:
    source = attack_json(tmp_path / "results" / "a")
    out = tmp_path / "site" / "report.html"
    assert report(source, "--out", out).exit_code == 0
    mine = out.parent / "report_files" / "mine.txt"
    mine.write_text("my notes")
    assert report(source, "--out", out, "--force").exit_code == 0
    assert mine.read_text() == "my notes"
    assert (out.parent / "report_files" / "plane-psnr.svg").is_file()


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_grid_file_must_stay_in_its_folder(tmp_path: Path, where: str) -> None:
    """grid.file may not make the report embed any image on the disk."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    folder = tmp_path / "results" / "a"
    name = {"absolute": str(secret), "parent": "../../secret.png", "symlink": "link.png"}[where]
    source = attack_json(folder, grid={"file": name, "rows": ["original", "blackbox"]})
    if where == "symlink":
        (folder / "link.png").symlink_to(secret)
    out = tmp_path / "report.html"
    result = report(source, "--out", out)
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "report_files").glob("grid-*"))
    assert "outside the folder of its attack.json" in out.with_suffix(".md").read_text()


def test_command_with_backticks_stays_inside_its_code_block(tmp_path: Path) -> None:
    command = "patrol-compress attack run\n```\n# Injected heading\n[link](http://x)\n````"
    source = attack_json(tmp_path / "results" / "a", command=command)
    out = tmp_path / "report.html"
    assert report(source, "--out", out).exit_code == 0
    markdown = out.with_suffix(".md").read_text()
    fence = "`````"  # one more backtick than the longest run inside
    assert f"{fence}\n{command}\n{fence}\n" in markdown


@pytest.mark.parametrize(
    ("side", "words"),
    [(20_000, "(DecompressionBombError)"), (8_000, "is (8000, 8000) pixels")],
    ids=["pillow-limit", "our-limit"],
)
def test_decompression_bomb_grid_is_a_note_not_a_crash(
    tmp_path: Path, side: int, words: str
) -> None:
    folder = tmp_path / "results" / "a"
    source = attack_json(folder)
    Image.new("1", (side, side)).save(folder / "attack_grid.png")  # tens of kB on disk
    out = tmp_path / "report.html"
    result = report(source, "--out", out)
    assert result.exit_code == 0, result.output
    assert words in out.with_suffix(".md").read_text()


def test_deeply_nested_attack_json_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "a"
    folder.mkdir(parents=True)
    (folder / "attack.json").write_text("[" * 100_000 + "]" * 100_000)
    result = report(folder / "attack.json", "--out", tmp_path / "report.html")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert not (tmp_path / "report.html").exists()
