"""User-facing error hierarchy.

Every error a user can cause (a bad recipe, a missing file, an absent optional
backend) is a :class:`PatrolError`. The CLI prints its message as one line and
exits with code 2; anything else is a bug and keeps its traceback. Messages say
what was expected and what was found and name the field or file, and never
contain tensors, images or labels.
"""

from __future__ import annotations

import importlib
from types import ModuleType


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
