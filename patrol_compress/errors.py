"""User-facing error hierarchy.

Every error a user can cause (a bad recipe, a missing file, an absent optional
backend) is a :class:`PatrolError`. The CLI prints its message as one line and
exits with code 2; anything else is a bug and keeps its traceback. Messages say
what was expected and what was found and name the field or file, and never
contain tensors, images or labels.
"""

from __future__ import annotations

import errno
import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def first_line(exc: BaseException | str, default: str | None = None) -> str:
    """The first non-empty line of an exception's message (or of a text), for one-line errors.

    Third-party errors (torch, onnx, pydantic) often carry a traceback-like
    message over many lines; a user error shows only its first line. An empty
    message gives ``default`` (else the exception's type name, or "").
    """
    text = exc if isinstance(exc, str) else str(exc)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    if default is not None:
        return default
    return "" if isinstance(exc, str) else type(exc).__name__


class PatrolWarning(UserWarning):
    """Something that will probably ruin the result but is not certain to (one line)."""


class PatrolError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class RecipeError(PatrolError):
    """A recipe file is malformed or fails validation."""


class DataError(PatrolError):
    """A dataset folder, file or image is missing or unreadable."""


class ModelError(PatrolError):
    """A model, checkpoint or split point does not fit what was asked."""


class BudgetError(PatrolError):
    """An edge budget cannot be met by any legal pruned network."""


class ExportError(PatrolError):
    """Exporting or verifying an edge/cloud partition failed."""


class ArtifactError(PatrolError):
    """An artifact on disk is missing, corrupt, or disagrees with its manifest."""


class TrainingError(PatrolError):
    """Training diverged (NaN/Inf) or cannot continue."""


class OutputExistsError(PatrolError):
    """An output directory exists and would be overwritten without --force."""


class UsageError(PatrolError):
    """A command-line option is out of range for this machine or this job."""


class RunLockedError(PatrolError):
    """Another process holds the run folder's lock (two jobs must never write one run)."""


class StorageError(PatrolError):
    """A file or folder cannot be read or written: permissions, a full disk, a file in the way."""


_MACHINE_ERRNOS = {
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
    errno.EROFS: "a read-only file system",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is too large for this file system",
    errno.EEXIST: "something of that name is in the way",
    errno.ENOTDIR: "a file is where a folder belongs",
    errno.EISDIR: "a folder is where a file belongs",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "a symbolic link loop",
    errno.EMLINK: "too many links",
    errno.EIO: "an input/output error of the device",
    errno.ENOENT: "it does not exist (any more)",
}
"""OSErrors the machine causes, not a bug: each becomes one :class:`StorageError` line."""


def storage_error(exc: OSError) -> StorageError | None:
    """The one-line error for ``exc`` when the machine caused it (see above), else None."""
    why = _MACHINE_ERRNOS.get(exc.errno or -1)
    if why is None:
        return None
    what = exc.strerror or type(exc).__name__
    if exc.filename is None:
        return StorageError(f"a file could not be read or written: {what} ({why})")
    other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return StorageError(f"{exc.filename}{other}: {what} ({why})")


def storage_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Raise :func:`storage_error`'s line for an OSError the machine caused inside ``fn``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            error = storage_error(exc)
            if error is None:
                raise
            raise error from None

    return wrapper


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional backend, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra, purpose) from None


class MissingExtraError(PatrolError):
    """An optional backend is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        hardware = " (TensorRT also needs an NVIDIA GPU with CUDA)" if extra == "tensorrt" else ""
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed; "
            f"run: pip install 'patrol-compress[{extra}]'{hardware}"
        )
        self.module = module
        self.extra = extra
