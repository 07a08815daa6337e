"""What the report says, independent of its format.

The HTML page and the markdown file are two layouts of one :class:`Report`:
the same points in the same order, the same tables, the same sentences. Only
this module decides the words, so the two never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from patrol_compress import __version__
from patrol_compress.report.collect import AttackSettings, Point
from patrol_compress.report.images import GridImage
from patrol_compress.report.plot import plotted, unplotted
from patrol_compress.report.tables import (
    Table,
    edge_table,
    quantization_table,
    settings_table,
    sources_table,
    summary_table,
)

DEFAULT_TITLE = "patrol-compress privacy report"

READING_GUIDE = (
    "Each point is one attacked edge partition. PSNR (dB) and SSIM compare the attacker's "
    "reconstructions with the camera images: higher means the attacker sees more. "
    "'attack acc' is the share of reconstructions that a recogniser trained on clean images "
    "assigns to the right identity. The strongest attack is the one with the highest PSNR. "
    "The mean-image baseline reconstructs every image as the average training image; the "
    "label-only baseline as the mean image of its class (or of its identity's other images). "
    "An attack that does not beat the higher of the two in PSNR and SSIM is marked "
    "ATTACK FAILED (hollow, dashed in the plots): it measures a weak attacker, not privacy."
)
SETTINGS_GUIDE = (
    "What each attacker was: the decoder family (or white-box start) that scored best, the "
    "epochs it trained of the configured maximum (it stops earlier on a plateau) or the "
    "white-box steps, and the images it trained on (white-box: the images it inverted). "
    "Scores of differently configured attackers are not comparable."
)
PLANE_GUIDE = (
    "x: accuracy of the attacked (defended) model; y: what the strongest attack recovers. "
    "Points of one series are joined in order of defense strength (then split). "
    "The dashed line is the mean-image baseline. Good defenses sit low and to the right."
)
EDGE_GUIDE = (
    "The edge runs the stem and the first split stages; bytes sent are what it uploads per "
    "image (fp32 features, or the packed codes of a quantized uplink). Uplink bits is a hard "
    "bound: one image's uplink carries at most that many bits, so no attacker, present or "
    "future, can learn more than that about the image from what crosses the split."
)
QUANTIZATION_GUIDE = (
    "The same edge exported in fp32 and int8 (patrol-compress export --precision int8), each "
    "attacked by the adaptive attack, which trains on what that artifact actually sends (the "
    "int8 edge's uint8, dequantized as the cloud does). A positive change means the int8 "
    "uplink leaks more. Compare only rows attacked alike."
)
FALLBACK_METRIC_NOTE = (
    "PSNR and SSIM per image (torchmetrics, data range 1.0), then averaged over images."
)


@dataclass(frozen=True)
class Report:
    title: str
    points: list[Point]
    grids: list[GridImage]
    base: Path  # the folder the outputs live in; sources are shown relative to it

    @property
    def summary(self) -> Table:
        return summary_table(self.points)

    @property
    def edge(self) -> Table:
        return edge_table(self.points)

    @property
    def quantization(self) -> Table | None:
        """fp32 vs int8 adaptive-attack leakage of the same edge, when the report holds both."""
        return quantization_table(self.points)

    @property
    def settings(self) -> Table:
        return settings_table(self.points)

    @property
    def settings_note(self) -> str | None:
        """A warning when the points' attackers differ (their scores are not comparable)."""
        kinds = _unique(_attacker(p) for p in self.points)
        if len(kinds) < 2:
            return None
        return (
            f"The points were attacked with {len(kinds)} different settings (see the table): "
            "compare leakage only between points attacked alike."
        )

    @property
    def headlines(self) -> list[str]:
        """'PATROL split 4: PSNR -38.8% / SSIM -62.6% vs undefended split 2' per PATROL point.

        Only where the report holds the undefended point at the PATROL point's
        budget split (``budget.fit_split``: where an unpruned edge had to be cut);
        both compared by their strongest attack.
        """
        out = []
        for p in self.points:
            k = (p.budget or {}).get("fit_split")
            if p.series.lower() != "patrol" or isinstance(k, bool) or not isinstance(k, int):
                continue
            base = next((b for b in self.points if b.series == "none" and b.split == k), None)
            if base is None:
                continue
            line = (
                f"{p.label}: PSNR {_change(p.strongest_score.psnr, base.strongest_score.psnr)} / "
                f"SSIM {_change(p.strongest_score.ssim, base.strongest_score.ssim)} "
                f"vs undefended split {k}"
            )
            if p.accuracy is not None and base.accuracy is not None:
                line += f", accuracy {100 * (p.accuracy.value - base.accuracy.value):+.1f} points"
            if _attacker(p) != _attacker(base):
                line += " (attacked with different settings)"
            if p.attack_failed or base.attack_failed:
                line += " (ATTACK FAILED on one of them: not a privacy measurement)"
            out.append(line + ".")
        return out

    @property
    def sources(self) -> Table:
        return sources_table(self.points, [self.source(p) for p in self.points])

    @property
    def plotted(self) -> list[Point]:
        return plotted(self.points)

    @property
    def unplotted_note(self) -> str | None:
        missing = unplotted(self.points)
        if not missing:
            return None
        names = ", ".join(p.label for p in missing)
        return f"Not plotted (their attack.json has no accuracy): {names}."

    @property
    def counts_line(self) -> str:
        n, k = len(self.points), len(self.plotted)
        return f"{n} point{'s' if n != 1 else ''}, {k} with an accuracy (plotted)."

    def source(self, p: Point) -> str:
        """The attack.json path relative to the report, so a moved folder still reads."""
        try:
            return os.path.relpath(p.source.resolve(), self.base.resolve())
        except ValueError:  # another drive on Windows
            return str(p.source.resolve())

    def grid_caption(self, i: int) -> str:
        p = self.points[i]
        return f"Rows, top to bottom: {', '.join(p.grid.rows)}. Columns: evaluation images."

    @property
    def metric_notes(self) -> list[str]:
        notes = _unique(p.metric_note for p in self.points)
        return notes or [FALLBACK_METRIC_NOTE]

    @property
    def region_notes(self) -> list[str]:
        return _unique(p.region_note for p in self.points)

    @property
    def commands(self) -> list[tuple[str, str]]:
        return [(p.label, p.command) for p in self.points if p.command]

    @property
    def version_groups(self) -> list[tuple[list[str], dict[str, str]]]:
        """Package versions, once per distinct set, with the points that share it."""
        groups: list[tuple[list[str], dict[str, str]]] = []
        for p in self.points:
            if not p.versions:
                continue
            for labels, versions in groups:
                if versions == p.versions:
                    labels.append(p.label)
                    break
            else:
                groups.append(([p.label], p.versions))
        return groups

    @property
    def generator(self) -> str:
        return f"written by patrol-compress {__version__} (report)"


def _attacker(p: Point) -> str:
    """What was configured for a point's attacks (caps, steps, images), as one string.

    The family that won and the epochs run before a plateau differ between
    points attacked alike, so they are left out.
    """
    parts = []
    for a in sorted(p.attacks):
        s = p.settings.get(a) or AttackSettings()
        parts.append(f"{a}: epochs {s.epochs}, steps {s.steps}, images {s.images}")
    return "; ".join(parts) + f"; {p.eval_images} images scored"


def _change(value: float, base: float) -> str:
    """Relative change in percent, signed: '-38.8%'."""
    if base == 0:
        return "n/a"
    return f"{100 * (value - base) / base:+.1f}%"


def _unique(values: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return out
