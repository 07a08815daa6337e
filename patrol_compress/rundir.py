"""Run directories: creation rules, stage bookkeeping, provenance files.

A run directory is refused if it exists and was not written by us unless
``--force``; ``--force`` only removes the files patrol-compress wrote, as
recorded in the run's ledger (:data:`~patrol_compress.io.LEDGER`); anything
else (a user's ``export/notes.json``) stays, with the folders that hold it.
``stages.json`` records each finished stage with its wall time; a resumed run
skips finished stages and never rewrites their outputs. The resolved recipe
and package versions are written next to every run's outputs, and a resumed
run must use the same resolved recipe: the same text, or a text that today's
schema reads to the same recipe (a run started before the schema gained a
field, at its default, resumes after an upgrade and keeps its own file and
hashes). The folder is locked
(:mod:`patrol_compress.locking`) from the moment it is opened until the job
ends, so a second job on the same run fails at once with one line.

Distributed runs: rank 0 alone checks, creates and writes the directory and
``stages.json``; both are collective steps (see
:meth:`patrol_compress.distributed.Dist.run_on_main`), so every rank waits
until rank 0 has written, sees the same ``stages.json`` afterwards, and fails
with rank 0's error if there is one.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from patrol_compress import distributed
from patrol_compress.config.recipe import Recipe, dump_recipe, parse_recipe
from patrol_compress.contracts import (
    ATTACK_FILE,
    ATTACK_GRID,
    CHECKPOINTS_DIR,
    DEFENSES_DIR,
    EXPORT_DIR,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PATROL_DIR,
    PRUNED_DIR,
    RECIPE_FILE,
    SAMPLES_FILE,
    STAGES_FILE,
    TARGET_DIR,
    VERSIONS_FILE,
)
from patrol_compress.errors import ArtifactError, OutputExistsError, PatrolError, RecipeError
from patrol_compress.io import (
    LEDGER,
    TEMP_PREFIX,
    is_leftover,
    package_versions,
    read_json,
    read_ledger,
    start_ledger,
    write_json,
    write_text,
)
from patrol_compress.locking import LOCK_FILE, FolderLock, acquire

OWNED = (
    STAGES_FILE,
    RECIPE_FILE,
    VERSIONS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    META_FILE,
    SAMPLES_FILE,
    TARGET_DIR,
    PATROL_DIR,
    PRUNED_DIR,
    CHECKPOINTS_DIR,
    EXPORT_DIR,
    DEFENSES_DIR,
    ATTACK_FILE,
    ATTACK_GRID,
)
WRITTEN_SUFFIXES = frozenset(
    {".safetensors", ".json", ".png", ".onnx", ".xml", ".bin", ".engine", ".cache", ".yaml"}
)
"""Every file patrol-compress writes inside a run folder ends in one of these
(weights, descriptions, grids, exported partitions, timing caches, recipes)."""


class RunDir:
    """An open run folder; holds its lock (rank 0) until :meth:`release` or the process ends."""

    def __init__(
        self, path: Path, lock: FolderLock | None = None, recipe_sha256: str | None = None
    ) -> None:
        self.path = path
        self._lock = lock
        self.recipe_sha256 = recipe_sha256

    def release(self) -> None:
        """Let the next job into this run folder."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def stages(self) -> dict[str, Any]:
        p = self.path / STAGES_FILE
        return read_json(p) if p.is_file() else {}

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        """Record a finished stage (rank 0 writes; every rank returns once it is written)."""

        def write() -> None:
            stages = self.stages
            stages[stage] = {"seconds": round(seconds, 3), **info}
            if self.recipe_sha256 is not None:  # which recipe produced it (checked on resume)
                stages[stage]["recipe_sha256"] = self.recipe_sha256
            write_json(self.path / STAGES_FILE, stages)

        distributed.current().run_on_main(write)

    @contextmanager
    def stage(self, name: str, **info: Any) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.mark(name, time.perf_counter() - start, **info)


def open_run(recipe: Recipe, out: Path | None, resume: bool, force: bool) -> RunDir:
    """Create or reopen the run directory according to the rules above, and lock it.

    The returned :class:`RunDir` holds the folder's lock (see
    :mod:`patrol_compress.locking`) until released: use it as a context manager
    around the whole job.
    """
    path = recipe.run_dir(out)
    # Read on every rank before rank 0 prepares: the stored file it keeps is unchanged.
    text = kept_recipe_text(path, recipe) if resume else dump_recipe(recipe)
    lock = distributed.current().run_on_main(lambda: _prepare(path, text, resume, force))
    return RunDir(path, lock, recipe_hash(text))


def recipe_hash(text: str) -> str:
    """sha256 of the resolved recipe's text: recorded with every finished stage."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def remove_written(folder: Path) -> None:
    """Legacy rule (runs from before the ledger): delete files with our suffixes below ``folder``.

    Also removes the folders that end up empty.
    """
    for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_symlink() or p.is_file():  # a link itself goes, never what it points to
            if p.suffix in WRITTEN_SUFFIXES or p.name.endswith(".tmp"):
                p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    if not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()


def remove_leftovers(root: Path) -> set[Path]:
    """Delete our temporary leftovers below ``root`` (a killed process's ``.tmp`` files and
    export ``.partial`` folders); returns the folders they were in.

    Ours are named with :data:`~patrol_compress.io.TEMP_PREFIX`
    (``.patrol-compress-tmp.NAME.<8 random>.tmp|partial``): a user's
    ``.notes.12345678.tmp`` or ``.backup.keep.partial/`` is not ours and stays.
    Only safe while the run's lock is held: no live job of ours is writing them.
    """
    parents: set[Path] = set()
    for leftover in sorted(root.rglob(f"{TEMP_PREFIX}*"), key=lambda q: len(q.parts), reverse=True):
        if is_leftover(leftover):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            parents.add(leftover.parent)
    return parents


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` with its folders resolved, if they lie inside ``root`` (a resolved path).

    The last component is not resolved: a link is removed as a link. A ledger
    entry reached through a symlinked folder (``link/passwd`` with ``link ->
    /etc``), or a ``checkpoints/`` linked to another disk, is outside the run's
    real folder and never deleted from it.
    """
    try:
        parent = path.parent.resolve()
    except (OSError, RuntimeError):  # a link loop
        return None
    return parent / path.name if parent.is_relative_to(root) else None


def _remove_empty_folders(folders: set[Path], root: Path) -> None:
    """Remove each folder (resolved, inside ``root``) and its parents while they are empty.

    The walk stops at ``root``, at a symlink and at anything that cannot be
    removed: a half-done walk must never fail the job.
    """
    for folder in sorted(folders, key=lambda q: len(q.parts), reverse=True):
        while folder != root and folder.is_relative_to(root) and not folder.is_symlink():
            try:
                if any(folder.iterdir()):
                    break
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


_NEVER_CLEARED = frozenset({LOCK_FILE, LEDGER})
"""The lock we hold and the ledger itself: a ledger entry naming them is not obeyed
(unlinking the held lock file would let a second job lock a new one)."""


def clear_run(path: Path) -> None:
    """``--force``: delete what we wrote into the run ``path``, nothing else.

    With a ledger (:data:`~patrol_compress.io.LEDGER`) exactly the files it
    records go, plus our temporary leftovers; a user's ``export/mine.json``
    stays whatever its name. Only files inside the run's real folder go
    (:func:`_inside`: no path through a symlink leading out). Folders that end
    up empty go too. A run from before the ledger existed falls back to
    :func:`remove_written`.
    """
    written = read_ledger(path)
    if written is None:
        for name in OWNED:
            owned = path / name
            if owned.is_symlink() and owned.is_dir():
                continue  # a linked folder (checkpoints/ on another disk): the user's set-up
            if owned.is_dir():
                remove_written(owned)
            elif owned.is_file() or owned.is_symlink():
                owned.unlink()
        return
    emptied: set[Path] = set()
    root = path.resolve()
    for rel in written:
        if ".." in Path(rel).parts or Path(rel).is_absolute() or rel in _NEVER_CLEARED:
            continue  # never written by us: record_written stores paths below the run
        target = _inside(root, root / rel)
        if target is not None and (target.is_symlink() or target.is_file()):
            target.unlink()
            emptied.add(target.parent)
    emptied |= remove_leftovers(root)
    _remove_empty_folders(emptied, root)
    write_text(path / LEDGER, "")


def kept_recipe_text(path: Path, recipe: Recipe) -> str:
    """The resolved recipe text a resumed run keeps: its stored file when today's schema
    reads that file to ``recipe`` (the file predates a field the schema gained, at its
    default), else ``recipe``'s own text.

    Why: the frontier's work folders already accept such a file (``_pin``); without
    this, every run interrupted before an upgrade refused ``--resume`` after it
    (measured: a frontier point started before ``uplink.rank`` existed). Keeping the
    stored text keeps the hashes its finished stages recorded valid.
    """
    text = dump_recipe(recipe)
    stored_path = path / RECIPE_FILE
    if not stored_path.is_file():
        return text
    stored = stored_path.read_text(encoding="utf-8")
    if stored == text:
        return text
    try:
        old = parse_recipe(yaml.safe_load(stored), str(stored_path))
    except (PatrolError, yaml.YAMLError):
        return text
    return stored if old.model_dump(mode="json") == recipe.model_dump(mode="json") else text


def _check_same_recipe(path: Path, text: str) -> None:
    """A resumed run must use the recipe it started with: the resolved recipe file and the
    hash every finished stage recorded (so deleting recipe.resolved.yaml does not let a
    changed learning rate in half-way). ``text`` is what :func:`kept_recipe_text` keeps."""
    differs = (path / RECIPE_FILE).is_file() and (path / RECIPE_FILE).read_text(
        encoding="utf-8"
    ) != text
    stages = read_json(path / STAGES_FILE) if (path / STAGES_FILE).is_file() else {}
    if not isinstance(stages, dict):
        raise ArtifactError(f"{path / STAGES_FILE}: expected a JSON object; the file is corrupt")
    digest = recipe_hash(text)
    recorded = {v.get("recipe_sha256") for v in stages.values() if isinstance(v, dict)} - {None}
    if differs or recorded - {digest}:
        raise RecipeError(
            f"{path}: this run was started with a different recipe; use a new --out or --force"
        )


def _check(path: Path, text: str, resume: bool, force: bool) -> bool:
    """Refuse what the rules above refuse (reads only); True when ``--force`` must clear a run."""
    existing = path.exists() and any(p.name != LOCK_FILE for p in path.iterdir())
    ours = (path / STAGES_FILE).is_file() or (path / RECIPE_FILE).is_file()
    if existing and resume and ours:
        _check_same_recipe(path, text)
        return False
    if existing and not force:
        what = "holds a run" if ours else "exists and is not empty"
        raise OutputExistsError(
            f"{path}: output directory {what}; pass --resume to continue it or --force to overwrite"
        )
    return existing and force and ours


def _prepare(path: Path, text: str, resume: bool, force: bool) -> FolderLock:
    """Check, lock, then (with ``--force``) clear and write the provenance files (``text``:
    the resolved recipe, as :func:`open_run` chose it).

    Checked before the lock so that a refused folder gets no lock file, and again
    under the lock, which is what makes the decision safe against another job.
    """
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path}: exists and is not a folder; choose another --out")
    _check(path, text, resume, force)
    lock = acquire(path)
    try:
        if _check(path, text, resume, force):
            clear_run(path)
        elif resume and path.is_dir():
            remove_leftovers(path)  # a killed run's .tmp/.partial: nobody else writes here now
        start_ledger(path)  # from here on, every file we write here is recorded
        write_text(path / RECIPE_FILE, text)
        write_json(path / VERSIONS_FILE, package_versions())
    except BaseException:
        lock.release()
        raise
    return lock
