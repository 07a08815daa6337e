"""Find ``attack.json`` files and turn each into one :class:`Point` of the report.

Every file is checked here, before anything is written, so a bad input stops the
report with one line naming the file and the key, never with a half-written
page. Keys added to ``attack.json`` after its first version (``label``,
``series``, ``defense``, ``accuracy``, ``edge``, ``budget``, ``strongest``) are
optional: old files still load, with a label derived from the run folder and
the series ``unlabelled``. Only JSON and file paths are touched here (no torch).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from patrol_compress.contracts import (
    ATTACK_FILE,
    ATTACK_GRID,
    MAX_COUNT,
    AttackResult,
    Counts,
    check_record,
)
from patrol_compress.contracts import Score as RecordScore
from patrol_compress.errors import ArtifactError

UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Score:
    """Reconstruction quality of one attack (or of the mean-image baseline)."""

    psnr: float
    ssim: float
    attack_accuracy: float | None = None


@dataclass(frozen=True)
class Defense:
    name: str
    parameter: str | None
    strength: float | None


@dataclass(frozen=True)
class Accuracy:
    """Utility of the (defended) model under attack; ``value`` is a fraction."""

    metric: str
    value: float


@dataclass(frozen=True)
class Grid:
    """Where the reconstruction grid should be, and what its rows show."""

    path: Path
    rows: list[str]


@dataclass(frozen=True)
class AttackSettings:
    """How strong one attack of a point was, as far as its attack.json tells.

    ``family``: the decoder family (black-box, adaptive) or white-box init that
    scored best; ``epochs_run`` of at most ``epochs`` (the config's cap) for a
    trained decoder, ``steps`` for the white-box optimisation; ``images``: the
    attacker's training images (decoders) or the images inverted (white-box).
    Every field is optional: older files hold fewer facts.
    """

    family: str | None = None
    epochs_run: int | None = None
    epochs: int | None = None
    steps: int | None = None
    images: int | None = None


@dataclass(frozen=True)
class Artifact:
    """The exported edge the adaptive attack queried: fp32 vs int8 leakage is read from it."""

    precision: str
    sent_dtype: str | None = None
    bytes_sent: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class Point:
    """One attacked model: a point on the privacy-utility plane and a table row."""

    source: Path
    label: str
    series: str
    split: int
    attacks: dict[str, Score]
    strongest: str
    strongest_score: Score
    grid: Grid
    mean_image: Score | None = None
    label_only: Score | None = None
    attack_failed: bool = False
    """No attack beat the label-only / mean-image floor: the point shows a failed
    attacker, never privacy."""
    defense: Defense | None = None
    accuracy: Accuracy | None = None
    edge: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    metric_note: str | None = None
    region_note: str | None = None
    command: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, AttackSettings] = field(default_factory=dict)
    """Per attack (same keys as ``attacks``): the settings behind its score."""
    eval_images: int | None = None
    run: str | None = None
    artifact: Artifact | None = None
    """Where the point has an adaptive attack: the artifact it attacked."""


def find_attack_files(paths: list[Path]) -> list[Path]:
    """Every attack.json named or under a named folder, each once, in a stable order."""
    found: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        if path.is_file():
            hits = [path]
        elif path.is_dir():
            hits = sorted(path.rglob(ATTACK_FILE))
            if not hits:
                raise ArtifactError(f"{path}: expected a folder holding {ATTACK_FILE}, found none")
        else:
            raise ArtifactError(
                f"{path}: not found (expected an {ATTACK_FILE} file or a folder holding some)"
            )
        for hit in hits:
            key = hit.resolve()
            if key not in seen:
                seen.add(key)
                found.append(hit)
    if not found:
        raise ArtifactError(f"expected at least one {ATTACK_FILE}; none given")
    return found


def load_points(paths: list[Path]) -> list[Point]:
    """Read and check every attack.json under ``paths``; sorted as the report shows them."""
    return sort_points(_distinct_labels([load_point(f) for f in find_attack_files(paths)]))


def _distinct_labels(points: list[Point]) -> list[Point]:
    """Two points with one label would be indistinguishable: add the result folder's name."""
    counts = Counter(p.label for p in points)
    out = [
        replace(p, label=f"{p.label} ({p.source.resolve().parent.name})")
        if counts[p.label] > 1
        else p
        for p in points
    ]
    seen: Counter[str] = Counter()
    for i, p in enumerate(out):
        seen[p.label] += 1
        if seen[p.label] > 1:
            out[i] = replace(p, label=f"{p.label} #{seen[p.label]}")
    return out


def load_point(path: Path) -> Point:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path}: expected valid JSON, found a syntax error at line {exc.lineno}, "
            f"column {exc.colno} ({exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: expected a readable UTF-8 JSON file ({exc})") from None
    return _point(path, check_record(AttackResult, data, path))


def _point(path: Path, r: AttackResult) -> Point:
    extra = r.model_extra or {}  # keys the record leaves untyped: data, config, ...
    strongest, strongest_score = _strongest(r)
    return Point(
        source=path,
        label=_default_label(path, r) if r.label is None else r.label,
        series=UNLABELLED if r.series is None else r.series,
        split=r.split,
        attacks={name: _score(s) for name, s in r.attacks.items()},
        strongest=strongest,
        strongest_score=strongest_score,
        grid=_grid(path, r),
        mean_image=None if r.mean_image is None else _score(r.mean_image),
        label_only=None if r.label_only is None else _score(r.label_only),
        attack_failed=r.attack_failed,
        defense=_defense(r),
        accuracy=None if r.accuracy is None else Accuracy(r.accuracy.metric, r.accuracy.value),
        edge=_counts(r.edge),
        budget=_counts(r.budget),
        metric_note=r.metric_note,
        region_note=r.region_note,
        command=r.command,
        versions=r.versions,
        settings={name: _settings(extra, name, s.model_extra) for name, s in r.attacks.items()},
        eval_images=_int(_get(extra, "data", "eval_images")),
        run=r.run,
        artifact=_artifact(r),
    )


def _artifact(r: AttackResult) -> Artifact | None:
    """The adaptive attack's artifact facts (older files: precision only, or nothing)."""
    adaptive = r.attacks.get("adaptive")
    info = _get(adaptive.model_extra if adaptive is not None else None, "info")
    precision = _get(info, "precision")
    if not isinstance(precision, str) or not precision:
        return None
    sent = _get(info, "sent_dtype")
    path = _get(info, "artifact")
    return Artifact(
        precision[:16],
        sent[:16] if isinstance(sent, str) else None,
        _int(_get(info, "bytes_sent")),
        path if isinstance(path, str) else None,
    )


def _defense(r: AttackResult) -> Defense | None:
    d = r.defense
    return None if d is None else Defense(d.name, d.parameter, d.strength)


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _int(value: Any) -> int | None:
    """A count for display: a non-negative integer, else None (never fails: shown as '-')."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _settings(d: dict[str, Any], name: str, result: Any) -> AttackSettings:
    """The settings of attack ``name``: its result's ``info`` and the file's ``config``."""
    info = _get(result, "info")
    family = _get(info, "family")
    # A decoder records its training data; the white-box attack the images it inverted.
    images = _get(info, "data", "images_used")
    return AttackSettings(
        family=family[:40] if isinstance(family, str) and family else None,
        epochs_run=_int(_get(info, "epochs_run")),
        epochs=_int(_get(d, "config", name, "epochs")),
        steps=_int(_get(d, "config", name, "steps")),
        images=_int(images if images is not None else _get(info, "images")),
    )


def _score(s: RecordScore) -> Score:
    return Score(psnr=s.psnr, ssim=s.ssim, attack_accuracy=s.attack_accuracy)


def _default_label(path: Path, r: AttackResult) -> str:
    """Old files have no label: name the run folder (``run/target`` for a target model)."""
    folder = Path(r.run) if r.run else path.resolve().parent
    name = folder.name or str(folder)
    if name == "target" and folder.parent.name:
        name = f"{folder.parent.name}/target"
    return f"{name} split {r.split}"


def _strongest(r: AttackResult) -> tuple[str, Score]:
    """The attack with the highest PSNR: the file's own pick when it names one."""
    attacks = r.attacks
    if r.strongest is None:
        name = max(attacks, key=lambda a: attacks[a].psnr)
        return name, _score(attacks[name])
    given = r.strongest
    base = attacks.get(given.attack)
    accuracy = None if base is None else base.attack_accuracy
    return given.attack, Score(given.psnr, given.ssim, accuracy)


def _grid(path: Path, r: AttackResult) -> Grid:
    default_rows = ["original", *r.attacks]
    if r.grid is None:
        return Grid(path.parent / ATTACK_GRID, default_rows)
    rows = default_rows if r.grid.rows is None else r.grid.rows
    return Grid(path.parent / r.grid.file, list(rows))


def _counts(counts: Counts | None) -> dict[str, Any] | None:
    """Edge/budget facts as the file has them (the record checked the named counts)."""
    return None if counts is None else counts.model_dump(exclude_unset=True)


# Baselines first, then the method, then the other defenses; unknown series after.
SERIES_ORDER = ("none", "patrol", "pruning-only", "noise", "dropout", "skip", "app")


def series_rank(series: str) -> tuple[int, str]:
    if series in SERIES_ORDER:
        return SERIES_ORDER.index(series), series
    return (len(SERIES_ORDER) + (1 if series == UNLABELLED else 0), series)


def strength_key(p: Point) -> tuple[float, int, str]:
    """Order inside a series: defense strength, then split, then label."""
    strength = p.defense.strength if p.defense and p.defense.strength is not None else -math.inf
    return strength, p.split, p.label


def sort_points(points: list[Point]) -> list[Point]:
    return sorted(points, key=lambda p: (series_rank(p.series), strength_key(p)))
