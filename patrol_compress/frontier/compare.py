"""Comparing two methods' privacy-utility frontiers, with intervals that say what they resample.

Each attacked point is a :class:`Record`: one method at one knob value, one
seed, one target (a target network trained with its own seed). Per method and
knob value the replicates (target seeds x seeds) are averaged into one point
of the privacy-utility plane; a method's *frontier* is the lower envelope of
its points (a point is dropped when another of the method is at least as
accurate and leaks no more), linear in accuracy between frontier points.

The *margin* of a method over a baseline is the baseline's frontier minus the
method's, averaged over the accuracy range both frontiers cover (positive:
the method leaks less at matched accuracy). It is only called a margin *at
matched accuracy* where the two methods' accuracy ranges (every replicate's
accuracy) overlap; otherwise the comparison is named for what it is (one
method more accurate everywhere, and leaking more or less).

The interval is a hierarchical bootstrap, paired across methods: each
resample draws the target seeds with replacement (the same draw for every
method, since every method prunes the same targets), then each point's seeds
within each drawn target, and the evaluation images (the same image indices
for every point). It therefore resamples targets, seeds and images, and with
two targets it says little about a third: the tables give every replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GRID = 50
CONFIDENCE = 0.95
RESAMPLES = "target seeds (paired across methods), seeds within each target, evaluation images"


@dataclass(frozen=True)
class Record:
    """One attacked point: a method at one knob value, one seed, one target seed."""

    method: str
    value: float
    seed: int
    target_seed: int
    accuracy: float
    psnr: list[float]
    ssim: list[float]
    uplink_bits: int | None = None
    """Bits one image's uplink can carry at most (the edge report's ``uplink_bits_max``)."""


Front = list[tuple[float, float]]


def frontier(points: Front) -> Front:
    """Lower envelope of (accuracy, leakage) points, by ascending accuracy."""
    kept = [
        (a, v)
        for a, v in points
        if not any((a2 >= a and v2 <= v) and (a2, v2) != (a, v) for a2, v2 in points)
    ]
    return sorted(set(kept))


def interpolate(front: Front, accuracy: float) -> float:
    """Leakage of the frontier at ``accuracy`` (linear between its points)."""
    xs, ys = zip(*front, strict=True)
    return float(np.interp(accuracy, xs, ys))


def common_range(a: Front, b: Front) -> tuple[float, float] | None:
    lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    return None if hi < lo else (lo, hi)


def margin(baseline: Front, method: Front) -> float | None:
    """Mean of baseline - method over the accuracy range both cover (None: no overlap)."""
    span = common_range(baseline, method)
    if span is None:
        return None
    lo, hi = span
    grid = np.linspace(lo, hi, GRID) if hi > lo else np.array([lo])
    return float(np.mean([interpolate(baseline, a) - interpolate(method, a) for a in grid]))


def near_margin(baseline: Front, method: Front, lo: float, hi: float) -> float | None:
    """Mean of baseline - method over the method's points whose accuracy lies in [lo, hi].

    For frontiers that share no accuracy range (a single knob value per
    method) but whose replicates' accuracies overlap: the baseline's frontier
    is read at each such point, held flat beyond its own points.
    """
    pts = [(a, v) for a, v in method if lo <= a <= hi]
    if not pts:
        return None
    return float(np.mean([interpolate(baseline, a) - v for a, v in pts]))


def _groups(records: list[Record]) -> dict[tuple[str, float], list[Record]]:
    groups: dict[tuple[str, float], list[Record]] = {}
    for r in records:
        groups.setdefault((r.method, r.value), []).append(r)
    return dict(sorted(groups.items()))


def method_points(
    records: list[Record],
    metric: str,
    images: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    targets: list[int] | None = None,
) -> dict[str, Front]:
    """Per method, (mean accuracy, mean leakage) of each knob value over its replicates.

    With ``rng`` and ``targets`` (a resampled list of target seeds) each knob
    value's seeds are drawn with replacement within each drawn target; with
    ``images`` the per-image scores are averaged over those image indices.
    """
    out: dict[str, Front] = {}
    for (m, _), rs in _groups(records).items():
        chosen = rs
        if rng is not None and targets is not None:
            chosen = []
            for t in targets:
                mine = [r for r in rs if r.target_seed == t]
                chosen += [mine[int(i)] for i in rng.integers(0, len(mine), len(mine))]
            if not chosen:
                continue
        accs = [r.accuracy for r in chosen]
        vals = [
            float(np.asarray(getattr(r, metric))[images].mean())
            if images is not None
            else float(np.mean(getattr(r, metric)))
            for r in chosen
        ]
        out.setdefault(m, []).append((float(np.mean(accs)), float(np.mean(vals))))
    return out


def accuracy_range(records: list[Record], method: str) -> tuple[float, float]:
    """Lowest and highest accuracy of any replicate of ``method``."""
    accs = [r.accuracy for r in records if r.method == method]
    return min(accs), max(accs)


def verdict(baseline: str, method: str, fronts: dict[str, Front]) -> str:
    """What a comparison without matched accuracy is: who is more accurate, who leaks more."""
    acc = {m: float(np.mean([a for a, _ in fronts[m]])) for m in (baseline, method)}
    leak = {m: float(np.mean([v for _, v in fronts[m]])) for m in (baseline, method)}
    more = baseline if acc[baseline] >= acc[method] else method
    less = method if more == baseline else baseline
    word = "less" if leak[more] < leak[less] else "more"
    return (
        f"no matched accuracy: {more} is more accurate (mean {acc[more] * 100:.1f}% vs "
        f"{acc[less] * 100:.1f}%) and leaks {word} (mean {leak[more]:.3f} vs {leak[less]:.3f})"
    )


def bit_labels(records: list[Record], methods: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per method, the uplink bound of each knob value's point, keyed as the svg looks it up
    (its mean accuracy): the plane's third axis."""
    out: dict[str, dict[str, str]] = {}
    for (m, _), rs in _groups(records).items():
        bits = [r.uplink_bits for r in rs if r.uplink_bits is not None]
        if m in methods and bits:
            key = f"{float(np.mean([r.accuracy for r in rs])):.6f}"
            out.setdefault(m, {})[key] = f"{int(round(float(np.mean(bits))))} b"
    return out


def compare(
    records: list[Record], metric: str, baseline: str, method: str, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """``method``'s margin below ``baseline`` at matched accuracy, with its interval."""
    pts = method_points(records, metric)
    fronts = {m: frontier(pts[m]) for m in (baseline, method)}
    ranges = {m: accuracy_range(records, m) for m in (baseline, method)}
    overlap = ranges[baseline][0] <= ranges[method][1] and ranges[method][0] <= ranges[baseline][1]
    span = common_range(fronts[baseline], fronts[method])
    lo_b, hi_b = ranges[baseline]

    def measure(b: Front, m: Front) -> float | None:
        return margin(b, m) if span is not None else near_margin(b, m, lo_b, hi_b)

    point = measure(fronts[baseline], fronts[method]) if overlap else None
    out: dict[str, Any] = {
        "metric": metric,
        "baseline": baseline,
        "method": method,
        "accuracy_ranges": {m: list(r) for m, r in ranges.items()},
        "matched_accuracy": overlap and point is not None,
        "common_range": None if span is None else list(span),
        "margin": point,
        "interval": None,
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "frontiers": fronts,
        "points": {m: pts[m] for m in (baseline, method)},
        "labels": bit_labels(records, (baseline, method)),
        "replicates": {
            m: [
                {
                    "value": r.value,
                    "seed": r.seed,
                    "target_seed": r.target_seed,
                    "accuracy": r.accuracy,
                    metric: float(np.mean(getattr(r, metric))),
                }
                for r in records
                if r.method == m
            ]
            for m in (baseline, method)
        },
    }
    if point is None:
        out["basis"] = verdict(baseline, method, fronts)
        return out
    if span is not None:
        out["basis"] = f"common accuracy range {span[0] * 100:.1f}-{span[1] * 100:.1f}%"
    else:
        out["basis"] = (
            f"the method's points within the baseline's accuracy range {lo_b * 100:.1f}-"
            f"{hi_b * 100:.1f}% (frontiers too short to share a range; the baseline's read at "
            "each point, flat beyond its own)"
        )
    targets = sorted({r.target_seed for r in records})
    n_img = {len(getattr(r, metric)) for r in records}
    rng = np.random.default_rng(seed)
    boot: list[float] = []
    for _ in range(n_boot):
        drawn = [targets[int(i)] for i in rng.integers(0, len(targets), len(targets))]
        images = rng.integers(0, min(n_img), min(n_img)) if len(n_img) == 1 else None
        sample = method_points(records, metric, images, rng, drawn)
        if baseline not in sample or method not in sample:
            continue
        m = measure(frontier(sample[baseline]), frontier(sample[method]))
        if m is not None:
            boot.append(m)
    alpha = (1 - CONFIDENCE) / 2
    if boot:
        out["interval"] = [float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))]
    out["bootstrap_kept"] = len(boot)
    out["bootstrap_resamples"] = n_boot
    out["images_resampled"] = len(n_img) == 1
    return out
