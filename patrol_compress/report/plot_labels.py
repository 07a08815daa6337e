"""Where to put point labels on the plane so that they do not overprint.

Points of one experiment often sit close together (two splits at the same
accuracy, two noise levels). A greedy search tries ten spots around each point
and keeps the first one that stays inside the plot and clear of every point and
every label already placed; a label with no free spot is dropped (the point's
tooltip and the tables still name it), except a required one (PATROL), which
takes its first spot anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Anchor = Literal["start", "end"]
# Average glyph advance of a sans-serif font, as a fraction of the font size.
CHAR_WIDTH = 0.6
_GAP = 3.0


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def hits(self, other: Box) -> bool:
        return not (
            self.x1 <= other.x0 or other.x1 <= self.x0 or self.y1 <= other.y0 or other.y1 <= self.y0
        )

    def inside(self, other: Box) -> bool:
        return (
            other.x0 <= self.x0
            and self.x1 <= other.x1
            and other.y0 <= self.y0
            and self.y1 <= other.y1
        )


@dataclass(frozen=True)
class LabelRequest:
    """A point at (x, y) of radius r (pixels) whose label is ``chars`` long."""

    x: float
    y: float
    r: float
    chars: int
    font_size: float
    required: bool = False


@dataclass(frozen=True)
class LabelSpot:
    """A text baseline position: ``anchor`` start draws right of x, end draws left of it."""

    x: float
    y: float
    anchor: Anchor


def text_box(x: float, baseline: float, chars: int, font_size: float, anchor: Anchor) -> Box:
    width = CHAR_WIDTH * font_size * chars
    x0 = x if anchor == "start" else x - width
    return Box(x0, baseline - font_size * 0.8, x0 + width, baseline + font_size * 0.25)


def place_labels(
    requests: list[LabelRequest], obstacles: list[Box], bounds: Box
) -> list[LabelSpot | None]:
    """One spot (or None) per request, in request order; required labels are placed first."""
    taken = list(obstacles)
    spots: list[LabelSpot | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: not requests[i].required)
    for i in order:
        req = requests[i]
        candidates = _candidates(req)
        chosen = next(
            (
                (spot, box)
                for spot, box in candidates
                if box.inside(bounds) and not any(box.hits(t) for t in taken)
            ),
            None,
        )
        if chosen is None and req.required:
            chosen = next(((s, b) for s, b in candidates if b.inside(bounds)), candidates[0])
        if chosen is not None:
            spots[i] = chosen[0]
            taken.append(chosen[1])
    return spots


def _candidates(req: LabelRequest) -> list[tuple[LabelSpot, Box]]:
    """Right and left of the point: at its height, then a little and a lot above and below."""
    fs, off = req.font_size, req.r + _GAP
    mid = req.y + fs * 0.3
    up, down = req.y - req.r * 0.6, req.y + req.r * 0.6 + fs * 0.8
    far_up, far_down = req.y - req.r - fs * 0.4, req.y + req.r + fs * 1.2
    sides: tuple[tuple[Anchor, float], ...] = (("start", req.x + off), ("end", req.x - off))
    out = []
    for baseline in (mid, up, down, far_up, far_down):
        for anchor, x in sides:
            spot = LabelSpot(round(x, 2), round(baseline, 2), anchor)
            out.append((spot, text_box(x, baseline, req.chars, fs, anchor)))
    return out
