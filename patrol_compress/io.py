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
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patrol_compress.errors import ArtifactError, first_line

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


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        record_written(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


LEDGER = ".patrol-compress.written"
"""A run folder's record of the files we wrote into it, one relative path a line.

Created when the run folder is opened; every file written through
:func:`atomic_path` (and every installed export file) below it is appended, so
``--force`` can remove exactly those and never a user's own file, whatever its
name or suffix."""
_LEDGER_DEPTH = 6


def find_ledger(path: Path) -> Path | None:
    """The ledger of the run folder ``path`` lies in (the nearest one above it), if any."""
    folder = Path(path).absolute().parent
    for _ in range(_LEDGER_DEPTH):
        candidate = folder / LEDGER
        if candidate.is_file():
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
    with open(ledger, "a", encoding="utf-8") as fh:
        fh.write(f"{target.relative_to(ledger.parent).as_posix()}\n")


def read_ledger(root: Path) -> list[str] | None:
    """The relative paths the ledger of ``root`` records (first-written first), or None."""
    ledger = root / LEDGER
    if not ledger.is_file():
        return None
    try:
        lines = ledger.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ArtifactError(f"{ledger}: cannot read the record of written files") from None
    return list(dict.fromkeys(line for line in lines if line.strip()))


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
