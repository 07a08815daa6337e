"""What every config file shares: one strict pydantic base and one YAML reader.

The recipe (:mod:`.recipe`) and the attack/defense settings (:mod:`.privacy`)
are pydantic v2 models on :class:`StrictModel`: ``extra="forbid"`` (a misspelt
key is an error, not a silent default), no NaN or infinity, closed choices as
``Literal``, ranges as ``Field`` bounds and cross-field rules in validators.
Files are read by :func:`read_yaml` (the bounded loader of
:mod:`patrol_compress.yamlio`) and validated by :func:`validate`, which turns
every violation into one line per problem (:func:`problems`): the field path,
what was expected and what was found. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from patrol_compress.errors import RecipeError
from patrol_compress.yamlio import load_yaml_file


class StrictModel(BaseModel):
    """The base of every config model: unknown keys and non-finite numbers are errors."""

    # NaN and infinity are never a meaningful tau, mask_lr or sigma (NaN passes every
    # range check: all comparisons with it are false).
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


M = TypeVar("M", bound=BaseModel)


def problems(exc: ValidationError) -> list[str]:
    """One line per problem: field path, what was expected, what was found."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(recipe)"
        found = err.get("input")
        found_s = short(found)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema)"
        lines.append(f"{loc}: {msg}; found {found_s}")
    return lines


def short(value: object) -> str:
    """A short excerpt of ``value`` for an error message, cheap however large the value is."""
    if isinstance(value, dict):
        keys = ", ".join(str(k)[:20] for k in list(value)[:6])
        return f"a mapping with keys {keys}" + (", ..." if len(value) > 6 else "")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    text = repr(value) if not isinstance(value, str) else repr(value[:80])
    return text if len(text) <= 60 else text[:57] + "..."


def validate(model: type[M], data: object, source: str) -> M:
    """``data`` (a parsed YAML document) as ``model``; each problem: one line of a RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: expected a YAML mapping at the top level, found {short(data)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError("\n".join(f"{source}: {p}" for p in problems(exc))) from None


def read_yaml(path: Path, what: str = "recipe") -> object:
    """The parsed YAML file at ``path`` (``what`` names it when it is missing)."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    return load_yaml_file(path, RecipeError)
