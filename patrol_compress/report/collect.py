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
from typing import Any, NoReturn

from patrol_compress.contracts import ATTACK_FILE, ATTACK_GRID
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
    return _point(path, _Reader(path, data))


class _Reader:
    """Typed access to one JSON document; every mismatch names the file and the key."""

    def __init__(self, path: Path, data: Any) -> None:
        self.path = path
        if not isinstance(data, dict):
            self.fail("", "a JSON object", type(data).__name__)
        self.data: dict[str, Any] = data

    def fail(self, key: str, expected: str, found: str) -> NoReturn:
        where = f" {key}:" if key else ""
        raise ArtifactError(f"{self.path}:{where} expected {expected}, found {found}")

    def required(self, key: str) -> Any:
        if self.data.get(key) is None:
            self.fail(key, _EXPECT[key], "nothing")
        return self.data[key]

    def number(self, value: Any, dotted: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(dotted, "a number", _describe(value))
        if not math.isfinite(value):
            self.fail(dotted, "a finite number", str(value))
        return float(value)

    def text(self, value: Any, dotted: str) -> str:
        if not isinstance(value, str):
            self.fail(dotted, "a string", _describe(value))
        return str(value)

    def mapping(self, value: Any, dotted: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(dotted, "an object", _describe(value))
        return dict(value)

    def score(self, value: Any, dotted: str) -> Score:
        m = self.mapping(value, dotted)
        for key in ("psnr", "ssim"):
            if key not in m:
                self.fail(f"{dotted}.{key}", f"the {key.upper()} (a number)", "nothing")
        acc = m.get("attack_accuracy")
        return Score(
            psnr=self.number(m["psnr"], f"{dotted}.psnr"),
            ssim=self.number(m["ssim"], f"{dotted}.ssim"),
            attack_accuracy=None if acc is None else self.number(acc, f"{dotted}.attack_accuracy"),
        )


_EXPECT = {
    "split": "the split point (an integer >= 1)",
    "attacks": "an object {attack name: {psnr, ssim, ...}} with at least one attack",
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return type(value).__name__


def _point(path: Path, r: _Reader) -> Point:
    d = r.data
    split = r.required("split")
    if isinstance(split, bool) or not isinstance(split, int) or split < 1:
        r.fail("split", _EXPECT["split"], _describe(split))
    raw_attacks = r.mapping(r.required("attacks"), "attacks")
    if not raw_attacks:
        r.fail("attacks", _EXPECT["attacks"], "an empty object")
    attacks = {name: r.score(v, f"attacks.{name}") for name, v in raw_attacks.items()}
    strongest, strongest_score = _strongest(r, attacks)
    mean = d.get("mean_image")
    label_only = d.get("label_only")
    failed = d.get("attack_failed", False)
    if not isinstance(failed, bool):
        r.fail("attack_failed", "true or false", _describe(failed))
    label = d.get("label")
    series = d.get("series")
    return Point(
        source=path,
        label=_default_label(path, d, split) if label is None else r.text(label, "label"),
        series=UNLABELLED if series is None else r.text(series, "series"),
        split=split,
        attacks=attacks,
        strongest=strongest,
        strongest_score=strongest_score,
        grid=_grid(path, r, list(attacks)),
        mean_image=None if mean is None else r.score(mean, "mean_image"),
        label_only=None if label_only is None else r.score(label_only, "label_only"),
        attack_failed=failed,
        defense=_defense(r),
        accuracy=_accuracy(r),
        edge=_counts(r, "edge", ("params", "weight_bytes", "macs", "bytes_sent")),
        budget=_counts(r, "budget", ("params", "fit_split")),
        metric_note=_optional_text(r, "metric_note"),
        region_note=_optional_text(r, "region_note"),
        command=_command(r),
        versions=_versions(r),
        settings={name: _settings(d, name, v) for name, v in raw_attacks.items()},
        eval_images=_int(_get(d, "data", "eval_images")),
    )


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _int(value: Any) -> int | None:
    """A count for display: a non-negative integer, else None (never fails: shown as '-')."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
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


def _default_label(path: Path, d: dict[str, Any], split: int) -> str:
    """Old files have no label: name the run folder (``run/target`` for a target model)."""
    run = d.get("run")
    folder = Path(run) if isinstance(run, str) and run else path.resolve().parent
    name = folder.name or str(folder)
    if name == "target" and folder.parent.name:
        name = f"{folder.parent.name}/target"
    return f"{name} split {split}"


def _strongest(r: _Reader, attacks: dict[str, Score]) -> tuple[str, Score]:
    """The attack with the highest PSNR: the file's own pick when it names one."""
    given = r.data.get("strongest")
    if given is None:
        name = max(attacks, key=lambda a: attacks[a].psnr)
        return name, attacks[name]
    m = r.mapping(given, "strongest")
    name = r.text(m.get("attack"), "strongest.attack")
    base = attacks.get(name)
    psnr = r.number(m.get("psnr"), "strongest.psnr")
    ssim = r.number(m.get("ssim"), "strongest.ssim")
    return name, Score(psnr, ssim, None if base is None else base.attack_accuracy)


def _grid(path: Path, r: _Reader, attack_names: list[str]) -> Grid:
    raw = r.data.get("grid")
    if raw is None:
        return Grid(path.parent / ATTACK_GRID, ["original", *attack_names])
    m = r.mapping(raw, "grid")
    file = r.text(m.get("file", ATTACK_GRID), "grid.file")
    rows = m.get("rows", ["original", *attack_names])
    if not isinstance(rows, list) or not all(isinstance(x, str) for x in rows):
        r.fail("grid.rows", "a list of row names", _describe(rows))
    return Grid(path.parent / file, list(rows))


def _defense(r: _Reader) -> Defense | None:
    raw = r.data.get("defense")
    if raw is None:
        return None
    m = r.mapping(raw, "defense")
    param = m.get("parameter")
    strength = m.get("strength")
    return Defense(
        name=r.text(m.get("name"), "defense.name"),
        parameter=None if param is None else r.text(param, "defense.parameter"),
        strength=None if strength is None else r.number(strength, "defense.strength"),
    )


def _accuracy(r: _Reader) -> Accuracy | None:
    raw = r.data.get("accuracy")
    if raw is None:
        return None
    m = r.mapping(raw, "accuracy")
    value = r.number(m.get("value"), "accuracy.value")
    if not 0.0 <= value <= 1.0:
        r.fail("accuracy.value", "a fraction in [0, 1]", str(value))
    return Accuracy(metric=r.text(m.get("metric"), "accuracy.metric"), value=value)


def _counts(r: _Reader, key: str, numeric: tuple[str, ...]) -> dict[str, Any] | None:
    """Edge/budget facts: the numbers are checked, anything else is kept as it is."""
    raw = r.data.get(key)
    if raw is None:
        return None
    m = r.mapping(raw, key)
    for name in numeric:
        if m.get(name) is not None:
            r.number(m[name], f"{key}.{name}")
    return m


def _optional_text(r: _Reader, key: str) -> str | None:
    value = r.data.get(key)
    return None if value is None else r.text(value, key)


def _command(r: _Reader) -> str | None:
    value = r.data.get("command")
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return " ".join(value)
    return None if value is None else r.text(value, "command")


def _versions(r: _Reader) -> dict[str, str]:
    value = r.data.get("versions")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


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
