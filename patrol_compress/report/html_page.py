"""The report as one self-contained HTML file.

Everything is inside the file (CSS inline, plots as inline SVG, grids as
base64 data URIs) so it can be mailed or archived and opens offline. A
Content-Security-Policy forbids every request except data: images, so a stray
external reference fails loudly in the browser test instead of leaking a
request. No JavaScript: the page is static text.
"""

from __future__ import annotations

import json
from html import escape

from patrol_compress.report.content import (
    EDGE_GUIDE,
    PLANE_GUIDE,
    QUANTIZATION_GUIDE,
    READING_GUIDE,
    SETTINGS_GUIDE,
    Report,
)
from patrol_compress.report.plot import plane_svg
from patrol_compress.report.tables import Table

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1500px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.4rem; white-space: nowrap; }
th { background: #f4f4f4; text-align: left; white-space: normal; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: normal; min-width: 4rem; max-width: 12rem; }
td.label { white-space: normal; min-width: 8rem; max-width: 16rem; }
tr.patrol td { font-weight: bold; background: #fff4ec; }
.plane { max-width: 100%; height: auto; display: block; }
figure { margin: 1rem 0; }
figcaption, .note { color: #555; font-size: 0.9rem; }
.grid-body { display: inline-flex; align-items: stretch; max-width: 100%; }
.row-labels { display: flex; flex-direction: column; margin-right: 0.5rem; }
.row-labels span { flex: 1; display: flex; align-items: center; justify-content: flex-end;
                   font-size: 0.8rem; color: #444; }
.grid img { min-width: 0; max-width: 100%; height: auto; image-rendering: pixelated;
            border: 1px solid #ccc; }
.grid-missing { border: 2px dashed #c33; color: #a22; padding: 1rem; max-width: 40rem; }
pre { background: #f7f7f7; padding: 0.5rem; overflow-x: auto; font-size: 0.8rem; }
footer { margin-top: 3rem; color: #777; font-size: 0.8rem; }
"""


def render_html(report: Report) -> str:
    t = escape(report.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{t}</title><style>{_CSS}</style></head><body>",
        f"<h1>{t}</h1>",
        f"<p>{escape(report.counts_line)}</p>",
        *[f'<p class="headline"><strong>{escape(h)}</strong></p>' for h in report.headlines],
        '<nav><a href="#summary-section">summary</a><a href="#plane-section">plane</a>'
        '<a href="#edge-section">edge partition</a><a href="#grids-section">grids</a>'
        '<a href="#method-section">method</a><a href="#provenance-section">provenance</a></nav>',
        '<h2 id="summary-section">Summary</h2>',
        f'<p class="note">{escape(READING_GUIDE)}</p>',
        _table(report.summary, report),
        '<h3 id="settings-section">Attack settings</h3>',
        f'<p class="note">{escape(SETTINGS_GUIDE)}</p>',
        _table(report.settings, report),
        *([f'<p class="note settings-note">{escape(n)}</p>' for n in [report.settings_note] if n]),
        *_quantization(report),
        '<h2 id="plane-section">Privacy-utility plane</h2>',
        f'<p class="note">{escape(PLANE_GUIDE)}</p>',
        f"<figure>{plane_svg(report.points, 'psnr')}</figure>",
        f"<figure>{plane_svg(report.points, 'ssim')}</figure>",
    ]
    if report.unplotted_note:
        parts.append(f'<p class="note unplotted">{escape(report.unplotted_note)}</p>')
    parts += [
        '<h2 id="edge-section">Edge partition</h2>',
        f'<p class="note">{escape(EDGE_GUIDE)}</p>',
        _table(report.edge, report),
        '<h2 id="grids-section">Reconstruction grids</h2>',
        *_grids(report),
        '<h2 id="method-section">How the numbers were measured</h2>',
        *[f'<p class="metric-note">{escape(n)}</p>' for n in report.metric_notes],
        *[f'<p class="region-note">{escape(n)}</p>' for n in report.region_notes],
        '<h2 id="provenance-section">Provenance</h2>',
        *_provenance(report),
        f"<footer>{escape(report.generator)}</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _quantization(report: Report) -> list[str]:
    """The fp32-vs-int8 section (rows are edges, not points), only when there is a pair."""
    table = report.quantization
    if table is None:
        return []
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if num else "text"}">{escape(c)}</td>'
            for c, num in zip(row, table.numeric, strict=True)
        )
        + "</tr>"
        for row in table.rows
    )
    return [
        '<h3 id="quantization-section">Did int8 change the leakage?</h3>',
        f'<p class="note">{escape(QUANTIZATION_GUIDE)}</p>',
        f'<div class="scroll"><table id="{table.id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>",
    ]


def _table(table: Table, report: Report) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    for p, row in zip(report.points, table.rows, strict=True):
        cells = "".join(
            f'<td class="num">{escape(c)}</td>'
            if num
            else f'<td class="{"label" if j == 0 else "text"}">{escape(c)}</td>'
            for j, (c, num) in enumerate(zip(row, table.numeric, strict=True))
        )
        cls = ' class="patrol"' if p.series.lower() == "patrol" else ""
        body.append(f'<tr{cls} data-series="{escape(p.series)}">{cells}</tr>')
    return (
        f'<div class="scroll"><table id="{table.id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _grids(report: Report) -> list[str]:
    out = []
    for i, (p, grid) in enumerate(zip(report.points, report.grids, strict=True)):
        if grid.ok:
            # Small grids (tiny test images) are enlarged, pixelated, to stay legible.
            scale = max(1, min(4, 480 // max(grid.width, 1)))
            labels = "".join(f"<span>{escape(r)}</span>" for r in p.grid.rows)
            body = (
                f'<div class="grid-body"><div class="row-labels">{labels}</div>'
                f'<img src="{grid.data_uri()}" width="{grid.width * scale}" '
                f'height="{grid.height * scale}" alt="reconstruction grid for {escape(p.label)}">'
                "</div>"
            )
        else:
            body = f'<div class="grid-missing" role="note">{escape(grid.problem or "")}</div>'
        out.append(
            f'<figure class="grid" id="grid-{i + 1}"><h3>{escape(p.label)}</h3>{body}'
            f"<figcaption>{escape(report.grid_caption(i))}</figcaption></figure>"
        )
    return out


def _provenance(report: Report) -> list[str]:
    out = [_table(report.sources, report)]
    for label, command in report.commands:
        out.append(f"<p>{escape(label)}:</p><pre>{escape(command)}</pre>")
    groups = report.version_groups
    for labels, versions in groups:
        who = "" if len(groups) == 1 else f" ({escape(', '.join(labels))})"
        out.append(
            f"<details><summary>package versions{who}</summary>{_pre_json(versions)}</details>"
        )
    return out


def _pre_json(data: object) -> str:
    return f"<pre>{escape(json.dumps(data, indent=2, sort_keys=True))}</pre>"
