"""The report as markdown, for a pull request, a wiki or a paper's notes.

Markdown cannot embed images reliably, so the plots and grids are files in a
folder next to the .md (``<stem>_files/``) and linked by relative path: the
.md and its folder move together. The words and numbers come from the same
:class:`Report` as the HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from patrol_compress.report.content import (
    EDGE_GUIDE,
    PLANE_GUIDE,
    QUANTIZATION_GUIDE,
    READING_GUIDE,
    SETTINGS_GUIDE,
    Report,
)
from patrol_compress.report.tables import Table


@dataclass(frozen=True)
class Assets:
    """Paths of the linked files, relative to the markdown file."""

    plane_psnr: str
    plane_ssim: str
    grids: list[str | None]  # None where the grid is missing or unreadable


def render_markdown(report: Report, assets: Assets) -> str:
    lines = [
        f"# {_inline(report.title)}",
        "",
        report.counts_line,
        "",
        *[line for h in report.headlines for line in (f"**{_inline(h)}**", "")],
        "## Summary",
        "",
        READING_GUIDE,
        "",
        *_table(report.summary),
        "",
        "### Attack settings",
        "",
        SETTINGS_GUIDE,
        "",
        *_table(report.settings),
        "",
        *([_inline(report.settings_note), ""] if report.settings_note else []),
        *_quantization(report),
        "## Privacy-utility plane",
        "",
        PLANE_GUIDE,
        "",
        f"![privacy-utility plane: strongest-attack PSNR]({_link(assets.plane_psnr)})",
        "",
        f"![privacy-utility plane: strongest-attack SSIM]({_link(assets.plane_ssim)})",
        "",
    ]
    if report.unplotted_note:
        lines += [_inline(report.unplotted_note), ""]
    lines += [
        "## Edge partition",
        "",
        EDGE_GUIDE,
        "",
        *_table(report.edge),
        "",
        "## Reconstruction grids",
        "",
    ]
    for i, (p, grid, link) in enumerate(
        zip(report.points, report.grids, assets.grids, strict=True)
    ):
        lines += [f"### {_inline(p.label)}", ""]
        if link is None:
            lines += [f"**{_inline(grid.problem or 'grid missing')}**", ""]
        else:
            lines += [f"![reconstruction grid for {_inline(p.label)}]({_link(link)})", ""]
        lines += [_inline(report.grid_caption(i)), ""]
    lines += ["## How the numbers were measured", ""]
    for note in report.metric_notes + report.region_notes:
        lines += [_inline(note), ""]
    lines += ["## Provenance", "", *_table(report.sources), ""]
    for label, command in report.commands:
        fence = _fence(command)
        lines += [f"{_inline(label)}:", "", fence, command, fence, ""]
    groups = report.version_groups
    for labels, versions in groups:
        who = "" if len(groups) == 1 else f" ({_inline(', '.join(labels))})"
        listed = ", ".join(f"{k} {v}" for k, v in versions.items())
        lines += [f"Package versions{who}: {_inline(listed)}", ""]
    lines += [f"*{report.generator}*", ""]
    return "\n".join(lines)


def _quantization(report: Report) -> list[str]:
    """The fp32-vs-int8 section, only when the report holds an fp32/int8 pair of one edge."""
    table = report.quantization
    if table is None:
        return []
    return ["### Did int8 change the leakage?", "", QUANTIZATION_GUIDE, "", *_table(table), ""]


def _table(table: Table) -> list[str]:
    head = "| " + " | ".join(_cell(h) for h in table.headers) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in table.numeric) + "|"
    rows = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return [head, rule, *rows]


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")


def _inline(text: str) -> str:
    """Keep user text (labels, notes) from turning into markdown or HTML."""
    out = text.replace("\n", " ")
    for ch in "\\`*_[]<>#":
        out = out.replace(ch, "\\" + ch)
    return out


def _fence(text: str) -> str:
    """A fence longer than any run of backticks in ``text``.

    CommonMark closes a fence only with at least as many backticks as opened
    it, so a command that holds three backticks cannot end its block early and
    turn the rest of the page into markdown.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _link(path: str) -> str:
    return quote(path, safe="/._-")
