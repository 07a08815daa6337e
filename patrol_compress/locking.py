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
different files of the same name. Where ``fcntl`` does not exist (Windows),
nothing is locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from patrol_compress.contracts import RECIPE_FILE, STAGES_FILE
from patrol_compress.errors import ArtifactError, RunLockedError

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
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
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


def run_root(folder: Path) -> Path:
    """The run folder ``folder`` belongs to (itself, or a parent holding stages.json).

    ``attack RUN/target`` and ``export`` into ``RUN/export/...`` write inside a
    run: they must take the same lock as a ``prune`` of that run.
    """
    for candidate in (folder, *list(folder.parents)[:2]):
        if (candidate / STAGES_FILE).is_file() or (candidate / RECIPE_FILE).is_file():
            return candidate
    return folder
