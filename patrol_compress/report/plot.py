"""The privacy-utility plane as hand-written SVG.

SVG text needs no plotting library and no JavaScript, embeds in the HTML as is
and opens on its own next to the markdown. x is the attacked model's accuracy,
y what the strongest attack recovers (PSNR or SSIM): the good corner is bottom
right. Every point is a ``<circle class="point">`` with ``data-series`` and
``data-label`` so tests (and people reading the source) can count them; a white
glyph inside the circle tells series apart without relying on colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Literal

from patrol_compress.report.collect import Point, Score, series_rank
from patrol_compress.report.plot_labels import Box, LabelRequest, place_labels, text_box

Metric = Literal["psnr", "ssim"]

WIDTH, HEIGHT = 780, 440
LEFT, RIGHT, TOP, BOTTOM = 72, 540, 36, 372  # the plotting area
LEGEND_X = 560
_LEGEND_STEP = 22
MAX_NAMED_POINTS = 12  # beyond this, only PATROL points carry a label (tooltips keep all)
_LABEL_FONT, _PATROL_FONT = 11, 12

# Okabe-Ito colours (readable with colour-blindness); PATROL gets the loudest one.
_FIXED_COLOURS = {"patrol": "#D55E00", "none": "#444444"}
_PALETTE = ("#0072B2", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#8C564B", "#B8A000")
_GLYPHS = ("none", "square", "triangle", "diamond", "cross", "bar", "chevron")

_AXIS_LABEL = {"psnr": "strongest-attack PSNR (dB)", "ssim": "strongest-attack SSIM"}


@dataclass(frozen=True)
class Style:
    colour: str
    glyph: str


def plotted(points: list[Point]) -> list[Point]:
    return [p for p in points if p.accuracy is not None]


def unplotted(points: list[Point]) -> list[Point]:
    return [p for p in points if p.accuracy is None]


def is_patrol(p: Point) -> bool:
    return p.series.lower() == "patrol"


def series_styles(points: list[Point]) -> dict[str, Style]:
    """One colour and glyph per series, stable for a given set of series."""
    names = sorted({p.series for p in points}, key=series_rank)
    styles: dict[str, Style] = {}
    free = 0
    for i, name in enumerate(names):
        colour = _FIXED_COLOURS.get(name.lower())
        if colour is None:
            colour = _PALETTE[free % len(_PALETTE)]
            free += 1
        styles[name] = Style(colour, _GLYPHS[i % len(_GLYPHS)])
    return styles


@dataclass(frozen=True)
class _Placed:
    """A plotted point in data units: x = accuracy (%), y = the metric's value."""

    point: Point
    metric_name: str
    x: float
    y: float


def plane_svg(points: list[Point], metric: Metric, *, standalone: bool = False) -> str:
    """SVG for ``metric`` against accuracy; ``standalone`` adds what a .svg file needs."""
    placed = [
        _Placed(p, p.accuracy.metric, 100 * p.accuracy.value, _pick(p.strongest_score, metric))
        for p in points
        if p.accuracy is not None
    ]
    styles = series_styles([q.point for q in placed])
    floors = [_pick(p.mean_image, metric) for p in points if p.mean_image is not None]
    floor = sum(floors) / len(floors) if floors else None
    x_ticks = _nice_ticks([q.x for q in placed] or [0.0, 100.0])
    y_values = [q.y for q in placed] + ([] if floor is None else [floor])
    y_ticks = _nice_ticks(y_values or [0.0, 1.0])
    sx = _Linear(x_ticks[0], x_ticks[-1], LEFT, RIGHT)
    sy = _Linear(y_ticks[0], y_ticks[-1], BOTTOM, TOP)
    height = max(HEIGHT, TOP + _LEGEND_STEP * (len(styles) + 3))

    out = [_open(metric, height, standalone)]
    out.append(f"<title>{escape(_title(metric))}</title>")
    out.append(f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>')
    out += _axes(x_ticks, y_ticks, sx, sy, metric, _x_label(placed))
    floor_box = None
    if floor is not None:
        floor_lines, floor_box = _floor_line(floor, floors, sy, metric)
        out += floor_lines
    out += _series_lines(placed, styles, sx, sy)
    out += [_point(q, styles[q.point.series], sx, sy) for q in placed]
    out += _point_labels(placed, styles, sx, sy, floor_box)
    out += _legend(styles, floor is not None)
    if not placed:
        out.append(
            f'<text x="{(LEFT + RIGHT) / 2}" y="{(TOP + BOTTOM) / 2}" text-anchor="middle" '
            'font-size="14" fill="#666">no point has an accuracy to plot</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _pick(score: Score, metric: Metric) -> float:
    return score.psnr if metric == "psnr" else score.ssim


def _open(metric: Metric, height: int, standalone: bool) -> str:
    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    return (
        f'<svg{ns} id="plane-{metric}" class="plane" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">'
    )


def _title(metric: Metric) -> str:
    return f"privacy-utility plane: {_AXIS_LABEL[metric]} against accuracy"


def _x_label(placed: list[_Placed]) -> str:
    metrics = sorted({q.metric_name for q in placed})
    name = " / ".join(metrics) if metrics else "accuracy"
    return f"{name} accuracy of the attacked model (%)"


def _nice_ticks(values: list[float], target: int = 5) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten) that cover ``values``."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start, stop = math.floor(lo / step), math.ceil(hi / step)
    return [round(i * step, 10) for i in range(start, stop + 1)]


@dataclass(frozen=True)
class _Linear:
    """Maps data units [d0, d1] onto pixels [r0, r1] (r1 < r0 for an upward y axis)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, v: float) -> float:
        return round(self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0), 2)


def _tick_text(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:.{decimals}f}"


def _axes(
    x_ticks: list[float],
    y_ticks: list[float],
    sx: _Linear,
    sy: _Linear,
    metric: Metric,
    x_label: str,
) -> list[str]:
    out = ['<g class="axes" stroke="#999" stroke-width="1">']
    x_step, y_step = x_ticks[1] - x_ticks[0], y_ticks[1] - y_ticks[0]
    for v in x_ticks:
        x = sx(v)
        out.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{BOTTOM}" stroke="#eee"/>')
        out.append(f'<line x1="{x}" y1="{BOTTOM}" x2="{x}" y2="{BOTTOM + 5}"/>')
    for v in y_ticks:
        y = sy(v)
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#eee"/>')
        out.append(f'<line x1="{LEFT - 5}" y1="{y}" x2="{LEFT}" y2="{y}"/>')
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
        'fill="none" stroke="#666"/>'
    )
    out.append("</g>")
    out.append('<g class="ticks" fill="#333">')
    for v in x_ticks:
        out.append(
            f'<text x="{sx(v)}" y="{BOTTOM + 18}" text-anchor="middle">'
            f"{_tick_text(v, x_step)}</text>"
        )
    for v in y_ticks:
        out.append(
            f'<text x="{LEFT - 8}" y="{sy(v) + 4}" text-anchor="end">{_tick_text(v, y_step)}</text>'
        )
    out.append("</g>")
    mid_x, mid_y = (LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2
    out.append(
        f'<text class="axis-label" x="{mid_x}" y="{BOTTOM + 40}" text-anchor="middle" '
        f'font-size="13">{escape(x_label)}</text>'
    )
    out.append(
        f'<text class="axis-label" x="18" y="{mid_y}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 18 {mid_y})">{escape(_AXIS_LABEL[metric])}</text>'
    )
    out.append(
        f'<text x="{RIGHT - 4}" y="{TOP - 10}" text-anchor="end" fill="#666">'
        "higher = attacker sees more; best corner: bottom right</text>"
    )
    return out


def _floor_line(
    floor: float, floors: list[float], sy: _Linear, metric: Metric
) -> tuple[list[str], Box]:
    """The dashed mean-image line, its caption, and the caption's box (labels avoid it)."""
    value = f"{floor:.2f} dB" if metric == "psnr" else f"{floor:.3f}"
    spread = max(floors) - min(floors)
    # Points usually share evaluation images; say so only when their baselines differ.
    visible = 0.05 if metric == "psnr" else 0.005
    note = f" (mean of {len(floors)}, spread {spread:.2g})" if spread > visible else ""
    caption = f"mean image {value}: attacker learned nothing{note}"
    y = sy(floor)
    # Below the line when the line hugs the top of the plot, else above it.
    baseline = y + 16 if y - 20 < TOP else y - 6
    lines = [
        f'<line class="baseline" x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#555" '
        'stroke-width="1.5" stroke-dasharray="6 4"/>',
        f'<text x="{LEFT + 6}" y="{baseline}" fill="#555">{escape(caption)}</text>',
    ]
    return lines, text_box(LEFT + 6, baseline, len(caption), 12, "start")


def _series_lines(
    placed: list[_Placed], styles: dict[str, Style], sx: _Linear, sy: _Linear
) -> list[str]:
    """Join a series' points in the report's order (defense strength, then split)."""
    out = []
    for name, style in styles.items():
        members = [q for q in placed if q.point.series == name]
        if len(members) < 2:
            continue
        coords = " ".join(f"{sx(q.x)},{sy(q.y)}" for q in members)
        out.append(
            f'<polyline class="series-line" data-series="{escape(name)}" points="{coords}" '
            f'fill="none" stroke="{style.colour}" stroke-width="1.8" stroke-opacity="0.8"/>'
        )
    return out


def _radius(p: Point) -> float:
    return 8 if is_patrol(p) else 6


def _point(q: _Placed, style: Style, sx: _Linear, sy: _Linear) -> str:
    p = q.point
    x, y, r = sx(q.x), sy(q.y), _radius(p)
    patrol = is_patrol(p)
    stroke = 'stroke="#000" stroke-width="2"' if patrol else 'stroke="#fff" stroke-width="1"'
    s = p.strongest_score
    tip = (
        f"{p.label}: {q.metric_name} {q.x:.1f}%, "
        f"{p.strongest} PSNR {s.psnr:.2f} dB, SSIM {s.ssim:.3f}"
    )
    classes = "point patrol" if patrol else "point"
    fill = style.colour
    if p.attack_failed:
        # Hollow and dashed: the attacker failed, so the height is no privacy measure.
        tip += " - ATTACK FAILED (not above the label-only floor): not a privacy result"
        classes += " failed"
        fill = "none"
        stroke = f'stroke="{style.colour}" stroke-width="2" stroke-dasharray="3 2"'
    return (
        f'<circle class="{classes}" data-series="{escape(p.series)}" '
        f'data-label="{escape(p.label)}" cx="{x}" cy="{y}" r="{r}" fill="{fill}" '
        f"{stroke}><title>{escape(tip)}</title></circle>"
        + _glyph(style.glyph, x, y, 3.2 if patrol else 2.6)
    )


def _point_labels(
    placed: list[_Placed], styles: dict[str, Style], sx: _Linear, sy: _Linear, floor: Box | None
) -> list[str]:
    """Name points where there is room: PATROL always, others up to MAX_NAMED_POINTS."""
    named = len(placed) <= MAX_NAMED_POINTS
    chosen = [q for q in placed if named or is_patrol(q.point)]
    requests = [
        LabelRequest(
            sx(q.x),
            sy(q.y),
            _radius(q.point),
            len(q.point.label),
            _PATROL_FONT if is_patrol(q.point) else _LABEL_FONT,
            required=is_patrol(q.point),
        )
        for q in chosen
    ]
    circles = [
        Box(sx(q.x) - r, sy(q.y) - r, sx(q.x) + r, sy(q.y) + r)
        for q in placed
        for r in [_radius(q.point)]
    ]
    bounds = Box(LEFT + 2, TOP + 2, RIGHT - 2, BOTTOM - 2)
    spots = place_labels(requests, circles + ([floor] if floor else []), bounds)
    out = []
    for q, spot in zip(chosen, spots, strict=True):
        if spot is None:
            continue
        patrol = is_patrol(q.point)
        colour = styles[q.point.series].colour if patrol else "#555"
        weight = ' font-weight="bold"' if patrol else ""
        size = _PATROL_FONT if patrol else _LABEL_FONT
        out.append(
            f'<text class="point-label" x="{spot.x}" y="{spot.y}" text-anchor="{spot.anchor}" '
            f'font-size="{size}" fill="{colour}"{weight}>{escape(q.point.label)}</text>'
        )
    return out


def _glyph(kind: str, x: float, y: float, s: float) -> str:
    """A small white mark inside a point: series stay apart in grey-scale too."""

    def at(dx: float, dy: float) -> str:
        return f"{x + dx * s:.2f},{y + dy * s:.2f}"

    paths = {
        "square": f"M{at(-1, -1)}L{at(1, -1)}L{at(1, 1)}L{at(-1, 1)}z",
        "triangle": f"M{at(0, -1.2)}L{at(1.1, 0.8)}L{at(-1.1, 0.8)}z",
        "diamond": f"M{at(0, -1.3)}L{at(1.3, 0)}L{at(0, 1.3)}L{at(-1.3, 0)}z",
        "cross": f"M{at(-1, 0)}L{at(1, 0)}M{at(0, -1)}L{at(0, 1)}",
        "bar": f"M{at(-1, 0)}L{at(1, 0)}",
        "chevron": f"M{at(-1, 0.5)}L{at(0, -0.7)}L{at(1, 0.5)}",
    }
    d = paths.get(kind)
    if d is None:
        return ""
    filled = kind in ("square", "triangle", "diamond")
    paint = 'fill="#fff"' if filled else 'fill="none" stroke="#fff" stroke-width="1.6"'
    return f'<path class="glyph" d="{d}" {paint} pointer-events="none"/>'


def _legend(styles: dict[str, Style], with_floor: bool) -> list[str]:
    out = [f'<g class="legend"><text x="{LEGEND_X}" y="{TOP + 4}" font-weight="bold">series</text>']
    y = TOP + 4 + _LEGEND_STEP
    for name, style in styles.items():
        cx = LEGEND_X + 8
        patrol = name.lower() == "patrol"
        stroke = 'stroke="#000" stroke-width="2"' if patrol else 'stroke="#fff"'
        out.append(
            f'<g class="legend-entry" data-series="{escape(name)}">'
            f'<line x1="{cx - 10}" y1="{y - 4}" x2="{cx + 10}" y2="{y - 4}" '
            f'stroke="{style.colour}" stroke-width="1.8"/>'
            f'<circle cx="{cx}" cy="{y - 4}" r="6" fill="{style.colour}" {stroke}/>'
            f"{_glyph(style.glyph, cx, y - 4, 2.6)}"
            f'<text x="{cx + 18}" y="{y}">{escape(name)}</text></g>'
        )
        y += _LEGEND_STEP
    if with_floor:
        out.append(
            f'<line x1="{LEGEND_X - 2}" y1="{y - 4}" x2="{LEGEND_X + 18}" y2="{y - 4}" '
            'stroke="#555" stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text x="{LEGEND_X + 26}" y="{y}">mean image (floor)</text>'
        )
    out.append("</g>")
    return out
