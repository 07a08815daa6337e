"""The report's tables as plain strings, shared by the HTML and markdown writers.

Building the cells once keeps the two outputs saying exactly the same numbers;
each writer only decides how to lay them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patrol_compress.report.collect import AttackSettings, Point

MISSING = "-"
_KNOWN_ATTACKS = ("blackbox", "whitebox", "adaptive", "informed")


@dataclass(frozen=True)
class Table:
    """Headers, string rows and which columns are numbers (right-aligned)."""

    id: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]


def attack_names(points: list[Point]) -> list[str]:
    """Every attack seen, the usual three first, the rest in order of appearance."""
    seen: list[str] = []
    for p in points:
        seen.extend(a for a in p.attacks if a not in seen)
    return sorted(
        seen,
        key=lambda a: _KNOWN_ATTACKS.index(a) if a in _KNOWN_ATTACKS else len(_KNOWN_ATTACKS),
    )


def summary_table(points: list[Point]) -> Table:
    """One row per point; each attack is one 'PSNR / SSIM / attack acc' cell to stay readable."""
    attacks = attack_names(points)
    headers = [
        "point",
        "split",
        "edge params",
        "weight bytes",
        "MACs / image",
        "bytes sent / image",
        "accuracy",
        *(f"{a}: PSNR dB / SSIM / attack acc" for a in attacks),
        "mean image: PSNR dB / SSIM",
        "label only: PSNR dB / SSIM",
        "strongest attack",
    ]
    rows = []
    for p in points:
        edge = p.edge or {}
        row = [
            p.label,
            str(p.split),
            count(edge.get("params")),
            si(edge.get("weight_bytes"), "B"),
            si(edge.get("macs"), ""),
            count(edge.get("bytes_sent"), " B"),
            accuracy_text(p),
        ]
        for a in attacks:
            s = p.attacks.get(a)
            row.append(
                MISSING
                if s is None
                else f"{db(s.psnr)} / {ssim(s.ssim)} / {percent(s.attack_accuracy)}"
            )
        for floor in (p.mean_image, p.label_only):
            row.append(MISSING if floor is None else f"{db(floor.psnr)} / {ssim(floor.ssim)}")
        row.append(strongest_text(p))
        rows.append(row)
    text = ("point", "accuracy", "strongest attack")
    return Table("summary", headers, rows, [h not in text for h in headers])


def edge_table(points: list[Point]) -> Table:
    headers = [
        "point",
        "split",
        "output shape",
        "edge params",
        "weight bytes (fp32)",
        "MACs / image",
        "bytes sent / image",
        "uplink bits / image (bound)",
        "budget params",
        "budget from split",
    ]
    rows = []
    for p in points:
        edge = p.edge or {}
        budget = p.budget or {}
        shape = edge.get("output_shape")
        rows.append(
            [
                p.label,
                str(p.split),
                "x".join(str(x) for x in shape) if isinstance(shape, list) else MISSING,
                count(edge.get("params")),
                count(edge.get("weight_bytes"), " B"),
                count(edge.get("macs")),
                count(edge.get("bytes_sent"), " B"),
                count(edge.get("uplink_bits_max")),
                count(budget.get("params")),
                MISSING if budget.get("fit_split") is None else str(budget["fit_split"]),
            ]
        )
    return Table("edge", headers, rows, [h != "point" for h in headers])


def settings_table(points: list[Point]) -> Table:
    """The attack settings behind each point's scores: a 3-epoch and a 30-epoch attacker
    are not the same measurement."""
    attacks = attack_names(points)
    headers = ["point", "split", "images scored", *(f"{a} settings" for a in attacks)]
    rows = []
    for p in points:
        row = [p.label, str(p.split), count(p.eval_images)]
        for a in attacks:
            row.append(MISSING if a not in p.attacks else settings_text(p.settings.get(a)))
        rows.append(row)
    return Table("settings", headers, rows, [h in ("split", "images scored") for h in headers])


def quantization_table(points: list[Point]) -> Table | None:
    """fp32 vs int8 leakage of one edge, side by side: did quantizing the uplink change it?

    Pairs points of the same run and split whose adaptive attacks queried an
    fp32 and an int8 artifact; None when the report holds no such pair. Only
    the adaptive attack is compared: it is the one that saw the deployed bytes.
    """
    headers = [
        "edge",
        "split",
        "fp32: PSNR dB / SSIM",
        "int8: PSNR dB / SSIM",
        "change: PSNR dB / SSIM",
        "bytes sent / image fp32 → int8",
        "attacked alike",
    ]
    rows = []
    for q in points:
        if q.artifact is None or q.artifact.precision != "int8" or "adaptive" not in q.attacks:
            continue
        base = next(
            (
                p
                for p in points
                if p.artifact is not None
                and p.artifact.precision == "fp32"
                and "adaptive" in p.attacks
                and p.split == q.split
                and p.run is not None
                and p.run == q.run
            ),
            None,
        )
        if base is None:
            continue
        a, b = base.attacks["adaptive"], q.attacks["adaptive"]
        rows.append(
            [
                base.label,
                str(q.split),
                f"{db(a.psnr)} / {ssim(a.ssim)}",
                f"{db(b.psnr)} / {ssim(b.ssim)}",
                f"{b.psnr - a.psnr:+.2f} / {b.ssim - a.ssim:+.3f}",
                f"{count(base.artifact.bytes_sent if base.artifact else None)} → "
                f"{count(q.artifact.bytes_sent)}",
                "yes" if _configured(base) == _configured(q) else "no",
            ]
        )
    if not rows:
        return None
    return Table("quantization", headers, rows, [False, True, True, True, True, True, False])


def _configured(p: Point) -> tuple[int | None, int | None] | None:
    """The adaptive attacker's configured epochs and training images (not its plateau)."""
    s = p.settings.get("adaptive")
    return None if s is None else (s.epochs, s.images)


def settings_text(s: AttackSettings | None) -> str:
    """'upsample, 12 of max 30 epochs, 1,080 images' (what the file tells; '-' if nothing)."""
    if s is None:
        return MISSING
    parts = [] if s.family is None else [s.family]
    if s.epochs_run is not None:
        cap = "" if s.epochs is None else f" of max {s.epochs:,}"
        parts.append(f"{s.epochs_run:,}{cap} epochs")
    elif s.epochs is not None:
        parts.append(f"max {s.epochs:,} epochs")
    if s.steps is not None:
        parts.append(f"{s.steps:,} steps")
    if s.images is not None:
        parts.append(f"{s.images:,} images")
    return ", ".join(parts) or MISSING


def sources_table(points: list[Point], sources: list[str]) -> Table:
    """Where each point came from (paths relative to the report) and what defended it."""
    headers = ["point", "series", "defense", "attack.json (relative to the report)"]
    rows = [
        [p.label, p.series, defense_text(p), src] for p, src in zip(points, sources, strict=True)
    ]
    return Table("sources", headers, rows, [False] * len(headers))


def defense_text(p: Point) -> str:
    d = p.defense
    if d is None:
        return MISSING
    if d.parameter and d.strength is not None:
        return f"{d.name} {d.parameter}={d.strength:g}"
    if d.strength is not None:
        return f"{d.name} {d.strength:g}"
    return d.name


def accuracy_text(p: Point) -> str:
    a = p.accuracy
    return MISSING if a is None else f"{a.metric} {percent(a.value)}"


def strongest_text(p: Point) -> str:
    s = p.strongest_score
    if p.attack_failed:
        return f"ATTACK FAILED: {p.strongest} ({db(s.psnr)} dB, not above the floor)"
    return f"{p.strongest} ({db(s.psnr)} dB)"


def db(v: float) -> str:
    return f"{v:.2f}"


def ssim(v: float) -> str:
    return f"{v:.3f}"


def percent(v: float | None) -> str:
    return MISSING if v is None else f"{100 * v:.1f}%"


def count(v: Any, unit: str = "") -> str:
    return MISSING if v is None else f"{round(float(v)):,}{unit}"


def si(v: Any, unit: str) -> str:
    """1,234,567 -> '1.23 M' + unit: MACs and byte counts read at a glance."""
    if v is None:
        return MISSING
    x = float(v)
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:g} {unit}".rstrip()
