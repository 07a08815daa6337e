"""One job per run folder: an OS file lock held for the whole job.

Two ``prune --resume`` on one run (two ``make demo`` in two terminals) would
otherwise both write it, and the files would come from different processes
(weights from one, accuracy from the other). Every command that writes into a
run folder takes :func:`folder_lock` first and keeps it until it is done; a
second one gets :class:`~patrol_compress.errors.RunLockedError` (one line,
exit 2) instead of waiting or mixing files.

The lock is ``fcntl.flock`` on :data:`LOCK_FILE` inside the folder: the kernel
releases it when the process ends, however it ends (SIGKILL, OOM, a crash), so
there is never a stale lock to delete by hand. The lock file itself stays (it
holds nothing); removing it on release would let two processes lock two
different files of the same name. It is opened without following a symlink:
a run folder received from someone else may hold a dangling link in its
place, which must not make us create a file wherever it points. Where
``fcntl`` does not exist (Windows), nothing is locked.

A job that writes anywhere inside a run (``export RUN/target``, ``export
OTHER --out RUN/x``, ``attack --out RUN/a/b/c``) locks that run:
:func:`enclosing_run` finds it from the output path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from patrol_compress.contracts import RECIPE_FILE, STAGES_FILE
from patrol_compress.errors import ArtifactError, RunLockedError
from patrol_compress.io import LEDGER

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".patrol-compress.lock"


class FolderLock:
    """A held lock; :meth:`release` (or the process ending) lets the next job in."""

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def acquire(folder: Path) -> FolderLock:
    """Create ``folder`` if needed and lock it, or raise RunLockedError at once (no waiting)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, flags, 0o644)
    except OSError as exc:
        if (folder / LOCK_FILE).is_symlink():
            raise ArtifactError(
                f"{folder / LOCK_FILE}: is a symbolic link; a run's lock file must be a plain "
                "file (a run folder must not point us at files elsewhere): remove the link"
            ) from None
        raise ArtifactError(
            f"{folder}: cannot create the run folder's lock file ({exc.strerror or exc})"
        ) from None
    if fcntl is None:  # pragma: no cover - not POSIX
        return FolderLock(folder, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"{folder}: another patrol-compress process is working in this run folder; "
            "wait for it to finish (or stop it), then retry"
        ) from None
    return FolderLock(folder, fd)


@contextmanager
def folder_lock(folder: Path) -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for the ``with`` block."""
    lock = acquire(folder)
    try:
        yield lock
    finally:
        lock.release()


RUN_MARKERS = (STAGES_FILE, RECIPE_FILE, LEDGER)
"""A folder holding one of these is a run folder (prune/train wrote it)."""


def enclosing_run(path: Path) -> Path | None:
    """The run folder ``path`` lies in (itself or its nearest ancestor that is a run), if any.

    ``export RUN/target``, ``export OTHER --out RUN/x`` and ``attack --out
    RUN/a/b/c`` write inside a run, however deep: they must take the same
    lock as a ``prune`` of that run. The path is resolved first (``..`` and
    symlinks), so the run found is the one the files will really land in.
    """
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop: nothing sensible to lock
        return None
    for candidate in (real, *real.parents):
        if any((candidate / marker).is_file() for marker in RUN_MARKERS):
            return candidate
    return None


def run_root(folder: Path) -> Path:
    """The run folder ``folder`` belongs to (:func:`enclosing_run`), else ``folder`` itself."""
    found = enclosing_run(folder)
    return found if found is not None else folder


def output_lock(path: Path) -> AbstractContextManager[object]:
    """The lock a job writing ``path`` must hold: that of the run ``path`` lies in, if any.

    A ``path`` outside every run is new or a user's folder: an existing folder
    is locked itself (two attacks must not write one folder); one that does not
    exist yet is not created here (a failed job would leave it behind).
    """
    root = enclosing_run(path)
    if root is None and Path(path).is_dir():
        root = Path(path)
    return folder_lock(root) if root is not None else nullcontext()
