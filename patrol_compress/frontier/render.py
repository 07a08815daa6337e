"""The frontier's markdown page and SVG planes: every replicate, the references and floors.

Tables give each method and knob value's mean and every replicate (target
seed / seed), so a reader sees the spread behind each mean; comparisons say
on what basis they were made (a common accuracy range, or none and why) and
what their interval resamples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patrol_compress.frontier.compare import Record

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def _cell(values: list[float], fmt: str) -> str:
    each = ", ".join(format(x, fmt) for x in values)
    return f"**{format(float(np.mean(values)), fmt)}** ({each})"


def summary_table(
    records: list[Record], refs: dict[str, dict[str, Any]], floors: dict[str, dict[str, float]]
) -> list[str]:
    """Per method and knob value: accuracy, strongest-attack PSNR and SSIM, mean and replicates."""
    groups: dict[tuple[str, float], list[Record]] = {}
    for r in records:
        groups.setdefault((r.method, r.value), []).append(r)
    out = [
        "| method | knob | replicates (t/s) | uplink bits/image | accuracy % | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for (m, v), rs in groups.items():
        rs = sorted(rs, key=lambda r: (r.target_seed, r.seed))
        reps = ", ".join(f"{r.target_seed}/{r.seed}" for r in rs)
        bits = sorted({r.uplink_bits for r in rs if r.uplink_bits is not None})
        shown = "-" if not bits else "/".join(f"{b:,}" for b in bits)
        out.append(
            f"| {m} | {v:g} | {reps} | {shown} | {_cell([r.accuracy * 100 for r in rs], '.1f')} | "
            f"{_cell([float(np.mean(r.psnr)) for r in rs], '.2f')} | "
            f"{_cell([float(np.mean(r.ssim)) for r in rs], '.3f')} |"
        )
    for label, ref in refs.items():
        out.append(
            f"| {label} (reference) | - | {ref['replicates']} | {ref.get('uplink_bits', '-')} | "
            f"{_cell([a * 100 for a in ref['accuracy']], '.1f')} | "
            f"{_cell(ref['psnr'], '.2f')} | {_cell(ref['ssim'], '.3f')} |"
        )
    for label, f in floors.items():
        out.append(
            f"| floor: {label.replace('_', ' ')} | - | - | - | - | {f['psnr']:.2f} | "
            f"{f['ssim']:.3f} |"
        )
    return out


def comparison_line(c: dict[str, Any], goal: float | None = None) -> str:
    """One comparison in words: the margin at matched accuracy and its interval, or why none."""
    head = f"- {c['method']} vs {c['baseline']}, {c['metric'].upper()}: "
    ranges = ", ".join(
        f"{m} {lo * 100:.1f}-{hi * 100:.1f}%" for m, (lo, hi) in c["accuracy_ranges"].items()
    )
    if c["margin"] is None:
        return head + f"{c['basis']} (accuracy ranges: {ranges})"
    iv = c["interval"]
    text = head + f"margin at matched accuracy {c['margin']:+.3f} ({c['basis']}"
    if iv is not None:
        text += (
            f"; {c['confidence']:.0%} interval [{iv[0]:+.3f}, {iv[1]:+.3f}] resampling "
            f"{c['resamples']}"
        )
    text += f"; accuracy ranges: {ranges})"
    if goal is not None:
        text += f"; goal >= +{goal}"
    return text


def svg(result: dict[str, Any], metric: str, accuracy_name: str) -> str:
    """A small standalone plane: replicates (hollow), per-knob means (filled), frontiers."""
    shown = list(result["frontiers"])
    reps = result.get("replicates", {})
    pts = [p for m in shown for p in result["points"][m]]
    pts += [(r["accuracy"], r[metric]) for m in shown for r in reps.get(m, [])]
    xs, ys = [p[0] * 100 for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs) - 1, max(xs) + 1
    pad = 0.05 * (max(ys) - min(ys) + 1e-9)
    y0, y1 = min(ys) - pad, max(ys) + pad

    def sx(x: float) -> float:
        return 60 + (x * 100 - x0) / (x1 - x0) * 520

    def sy(y: float) -> float:
        return 330 - (y - y0) / (y1 - y0) * 300

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="380" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="640" height="380" fill="#fff"/>',
        '<line x1="60" y1="330" x2="580" y2="330" stroke="#000"/>',
        '<line x1="60" y1="30" x2="60" y2="330" stroke="#000"/>',
        f'<text x="320" y="365" text-anchor="middle">{accuracy_name} (%)</text>',
        f'<text x="15" y="180" transform="rotate(-90 15 180)" text-anchor="middle">'
        f"strongest-attack {metric.upper()}</text>",
        f'<text x="60" y="345">{x0:.1f}</text><text x="580" y="345" text-anchor="end">'
        f"{x1:.1f}</text>",
        f'<text x="55" y="330" text-anchor="end">{y0:.2f}</text>'
        f'<text x="55" y="35" text-anchor="end">{y1:.2f}</text>',
    ]
    labels = result.get("labels", {})
    for i, (m, front) in enumerate(result["frontiers"].items()):
        c = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{sx(a):.1f},{sy(v):.1f}" for a, v in front)
        out.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
        for a, v in result["points"][m]:
            out.append(f'<circle cx="{sx(a):.1f}" cy="{sy(v):.1f}" r="4" fill="{c}"/>')
            tag = labels.get(m, {}).get(f"{a:.6f}")
            if tag:
                out.append(f'<text x="{sx(a) + 6:.1f}" y="{sy(v) - 6:.1f}" fill="{c}">{tag}</text>')
        out += [
            f'<circle cx="{sx(r["accuracy"]):.1f}" cy="{sy(r[metric]):.1f}" r="3" fill="none" '
            f'stroke="{c}"/>'
            for r in reps.get(m, [])
        ]
        out.append(f'<text x="440" y="{50 + 16 * i}" fill="{c}">{m}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
