"""Files: atomic writes, JSON, package versions, safetensors.

Nothing already on disk is ever half-overwritten: every writer goes to a
temporary file in the same folder, fsyncs, then renames over the target. Weights
are safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patrol_compress.errors import (
    ArtifactError,
    PatrolError,
    StorageError,
    first_line,
    storage_error,
)

_VERSIONED = (
    "patrol-compress",
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "tensorrt",
    "numpy",
    "pydantic",
    "torchmetrics",
    "safetensors",
)


TEMP_PREFIX = ".patrol-compress-tmp."
"""Every temporary file or work folder we create starts with this: a killed process's
leftovers are found by it, and no user's file (``.notes.12345678.tmp``) looks like one."""
_LEFTOVER = re.compile(r"^\.patrol-compress-tmp\..*\.[A-Za-z0-9_]{8}\.(tmp|partial)$")


def temp_name_prefix(name: str) -> str:
    """The ``prefix`` for mkstemp/mkdtemp of a temporary stand-in for ``name``.

    The name is shortened so that prefix, name, random part and suffix stay
    within a file name's 255 bytes.
    """
    return f"{TEMP_PREFIX}{name[:120]}."


def is_leftover(path: Path) -> bool:
    """Whether ``path`` is one of our temporary files (``.tmp``) or work folders (``.partial``)."""
    match = _LEFTOVER.match(path.name)
    if match is None:
        return False
    kind = match.group(1)
    return path.is_symlink() or (path.is_dir() if kind == "partial" else path.is_file())


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=temp_name_prefix(target.name), suffix=".tmp", dir=target.parent
        )
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        record_written(target)
    except OSError as exc:  # a full disk, a lost permission: the old file is untouched
        raise _cannot_write(target, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _cannot_write(target: Path, exc: OSError) -> PatrolError:
    """One line naming the file we were writing (not our temporary name for it)."""
    error = storage_error(exc)
    if error is None:
        return ArtifactError(f"{target}: cannot write it ({exc.strerror or exc})")
    why = str(error).rsplit(": ", 1)[-1]
    return StorageError(f"{target}: cannot write it: {why}")


LEDGER = ".patrol-compress.written"
"""A run folder's record of the files we wrote into it, one relative path a line.

Created when the run folder is opened; every file written through
:func:`atomic_path` (and every installed export file) below it is appended, so
``--force`` can remove exactly those and never a user's own file, whatever its
name or suffix."""
_LEDGER_DEPTH = 6


def find_ledger(path: Path) -> Path | None:
    """The ledger of the run folder ``path`` lies in (the nearest one above it), if any.

    A ledger that is a symlink is not ours (we create it as a plain file) and is
    never written through: it is reported by :func:`_append` instead.
    """
    folder = Path(path).absolute().parent
    for _ in range(_LEDGER_DEPTH):
        candidate = folder / LEDGER
        if candidate.is_file() or candidate.is_symlink():
            return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def record_written(path: Path | str) -> None:
    """Append ``path`` to its run folder's ledger (nothing outside a run folder)."""
    target = Path(path).absolute()
    ledger = find_ledger(target)
    if ledger is None or "\n" in str(target):
        return
    _append(ledger, f"{target.relative_to(ledger.parent).as_posix()}\n")


def _append(ledger: Path, text: str) -> None:
    """Append to (or create) ``ledger`` without following a symlink in its place.

    A run folder received from someone else could hold a link there to a file
    of the user's (``~/.bashrc``): appending through it would write outside the run.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(ledger, flags, 0o644)
    except OSError as exc:
        if ledger.is_symlink():
            raise ArtifactError(
                f"{ledger}: is a symbolic link; the record of written files must be a plain "
                "file (a run folder must not point us at files elsewhere): remove the link"
            ) from None
        raise ArtifactError(f"{ledger}: cannot write it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(text)


def start_ledger(folder: Path) -> None:
    """Create ``folder``'s ledger if it is missing (never through a symlink)."""
    _append(Path(folder) / LEDGER, "")


def read_ledger(root: Path) -> list[str] | None:
    """The relative paths the ledger of ``root`` records (first-written first), or None."""
    ledger = root / LEDGER
    if ledger.is_symlink():
        raise ArtifactError(
            f"{ledger}: is a symbolic link; the record of written files must be a plain file "
            "(a run folder must not point us at files elsewhere): remove the link"
        )
    if not ledger.is_file():
        return None
    try:
        lines = ledger.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ArtifactError(f"{ledger}: cannot read the record of written files") from None
    return list(dict.fromkeys(line for line in lines if line.strip()))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system cannot (then nothing moved).
    """
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` (an existing folder) in one step; the old
    ``target`` ends up at ``new`` (for the caller to delete).

    A kill at any moment leaves ``target`` either the old folder or the new one,
    never a mix. Where the atomic exchange is not available, two renames (the
    old folder is moved aside to a temporary name, then ``new`` into place) are
    rolled back if the second fails; only a kill between them leaves
    ``target`` missing, with the old folder beside it under a
    :data:`TEMP_PREFIX` name.
    """
    if _exchange(new, target):
        return
    aside = Path(
        tempfile.mkdtemp(prefix=temp_name_prefix(target.name), suffix=".partial", dir=target.parent)
    )
    aside.rmdir()  # a free name next to target: os.replace cannot move a folder onto a folder
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    os.replace(aside, new)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: Path | str) -> Any:
    """Parse a JSON file we wrote; a corrupt one is an ArtifactError (one line), not a traceback.

    Truncated, edited or non-UTF-8 files, and absurdly deep nesting (Python's
    recursion limit), all mean the file is not what we wrote.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        reason = first_line(exc)[:120]
        raise ArtifactError(f"{p}: not valid JSON ({reason}); the file is corrupt") from None
    except IsADirectoryError:
        raise ArtifactError(f"{p}: expected a JSON file, found a folder") from None


def contained_file(root: Path, name: object, source: Path) -> Path:
    """``root/name`` for a file name read from ``source``, refused unless it stays in ``root``.

    Our JSON files name their companions (``model.json`` its weights,
    ``last.json`` its checkpoint); an edited name must not make us load a file
    from elsewhere (``../../other/model.safetensors``, an absolute path, or a
    symlink leading out).
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{source}: expected a file name, found {str(name)[:60]!r}")
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{source}: names '{name[:80]}', which is outside {root}")
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{source}: names {path}, a link to a file outside {root}")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones omitted)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
