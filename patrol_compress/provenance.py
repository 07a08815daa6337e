"""Where a result came from: device, versions, commit, command, recipe and weight hashes.

A number is only as good as what a reader can check about it. Every results
file this package writes for a benchmark (the frontier, the attack-speed and
overhead benchmarks) carries a ``provenance`` block made here, per point where
points were made separately (they may come from different invocations, shards
or machines): the machine (CPU model, GPU if one was used, thread count), the
library versions, the git commit of the source tree (and whether it had
uncommitted changes), the command line, the sha256 of the resolved recipe and
of the weights the point was made from and ended with.

The commit is the one the process *loaded*: taken when this module is
imported (at a benchmark's or the CLI's start), not when the file is written.
A measurement that runs for an hour while later commits land would otherwise
name code it never ran (it happened: two attack results named a commit made
while they ran). When the tree has moved by the time the record is written,
``commit_when_written`` says where to, so a reader sees both. Modules that
write provenance (the frontier, the benchmarks) import this one at their top,
not inside the function that writes, so that it is loaded with them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from patrol_compress.io import package_versions, sha256_file

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's processor)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """The machine a result was computed on, as far as it shapes the numbers."""
    import torch

    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


DIRTY_PATHS_KEPT = 20
"""How many changed paths a provenance record names (a count would hide which)."""


def git_commit(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """The commit the source tree is at, whether it differs from it (None outside git), and
    which tracked paths differ (``dirty_paths``, at most :data:`DIRTY_PATHS_KEPT`): a result
    file being written beside a run is not a code change, and a reader should be able to
    tell the two apart."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    # "XY path" per line; git() strips the output, so the first line may have lost its X.
    paths = [line[2:].strip() for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(status), "dirty_paths": paths[:DIRTY_PATHS_KEPT]}


_LOADED: dict[str, Any] = git_commit()
"""The source tree's commit when this process imported this module (module docstring)."""


def loaded_commit() -> dict[str, Any]:
    """:func:`git_commit` as it was when this process loaded the package's code."""
    return dict(_LOADED)


def write_results(stem: Path, record: dict[str, Any], markdown: str) -> None:
    """A benchmark's results as ``stem.json`` (``record`` plus its provenance block for this
    command line) and ``stem.md`` (``markdown``), each written atomically."""
    from patrol_compress.io import write_json, write_text

    write_json(stem.with_suffix(".json"), {**record, "provenance": provenance(command_line())})
    write_text(stem.with_suffix(".md"), markdown)


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: the program's name and its arguments, shell-quoted."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = Path(args[0]).name
    return " ".join(shlex.quote(a) for a in args)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path | str | None) -> str | None:
    return sha256_file(path) if path is not None and Path(path).is_file() else None


def provenance(
    command: str | None = None,
    recipe_text: str | None = None,
    weights: dict[str, Path | str | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance block of a result (module docstring); ``extra`` is merged in as given."""
    loaded, now = loaded_commit(), git_commit()
    moved = {} if now == loaded else {"commit_when_written": now}
    return {
        "device": device_info(),
        "versions": package_versions(),
        **loaded,
        **moved,
        "command": command if command is not None else command_line(),
        "recipe_sha256": None if recipe_text is None else text_sha256(recipe_text),
        "weights_sha256": {k: file_sha256(v) for k, v in (weights or {}).items()},
        **extra,
    }
