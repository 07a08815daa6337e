"""Two methods under the same stronger attacker, paired by target and seed.

``attacker_strength.py`` attacks frontier points with a stronger black-box
than the frontier's own suite, one results file per run. Deciding which of two
uplinks ships needs them side by side: the same target network, the same
pruning seed, the same evaluation images, so that what differs is the method
(the targets alone move leakage by more than some differences between methods).
This script reads the results files of both methods, pairs their points by the
``-s<seed>-t<target>`` suffix of the point names, refuses pairs scored on
different evaluation images, and reports per pair the stronger attack's
``B - A`` in PSNR and SSIM (negative: B leaks less), with the count of pairs
where B leaks less and the median. It attacks nothing itself::

    python benchmarks/paired_strength.py --name fashion32_noise05_vs_narrow96 \\
        --a benchmarks/results/attacker_strength_fashion32_narrow96_strong_t0.json,... \\
        --b benchmarks/results/attacker_strength_fashion32_noise05_strong_t0.json,...

``--take max`` pairs, per metric, the higher of the two attacks each results
file holds for a point (the frontier's light black-box and the one
``attacker_strength.py`` ran, e.g. ``--attack informed``): the worst case for
the edge over both. It is read on the evaluation images, so it flatters the
attacker (a choice on the scored images), on both sides alike; the default,
``stronger``, takes the attack that was run.

With four pairs no sign test reaches 5% (its smallest p-value is 1/16), so the
output is an effect size for a rule fixed beforehand, not a significance claim;
the markdown says so.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from patrol_compress.io import read_json
from patrol_compress.provenance import write_results

RESULTS = Path(__file__).resolve().parent / "results"
PAIR = re.compile(r"-(s\d+-t\d+)$")
TAKES = ("stronger", "max")


def scores(row: dict[str, Any], take: str = "stronger") -> dict[str, Any]:
    """A point's PSNR, SSIM and evaluation images under ``take`` (module docstring)."""
    run = row["default"]
    if take == "stronger":
        return {k: run[k] for k in ("psnr", "ssim", "image_set")}
    light = row["light"]
    if light["image_set"] != run["image_set"]:
        raise SystemExit(f"{row['point']}: its two attacks scored different evaluation images")
    return {
        "psnr": max(light["psnr"], run["psnr"]),
        "ssim": max(light["ssim"], run["ssim"]),
        "image_set": run["image_set"],
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--a", required=True, help="comma-separated results files of method A")
    p.add_argument("--b", required=True, help="comma-separated results files of method B")
    p.add_argument("--a-prefix", default="", help="only A's points whose name starts so")
    p.add_argument("--b-prefix", default="", help="only B's points whose name starts so")
    p.add_argument("--name", required=True, help="results file stem suffix")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--take",
        choices=TAKES,
        default="stronger",
        help="stronger: the attack attacker_strength.py ran; max: per metric, the higher of it "
        "and the frontier's light black-box",
    )
    return p.parse_args(argv)


def points_by_pair(files: list[Path], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Each results file's points, keyed by ``s<seed>-t<target>``; one method per side.

    A results file may hold two methods' points (a pair attacked in one
    process); ``prefix`` keeps the side's own.
    """
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for row in read_json(f)["points"]:
            if not row["point"].startswith(prefix):
                continue
            m = PAIR.search(row["point"])
            if m is None:
                raise SystemExit(f"{f}: point {row['point']!r} has no -s<seed>-t<target> suffix")
            if m.group(1) in out:
                raise SystemExit(f"{f}: pair {m.group(1)} appears twice on one side")
            out[m.group(1)] = row
    return out


def pair_rows(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], take: str = "stronger"
) -> list[dict[str, Any]]:
    """``B - A`` of the attack ``take`` names for every pair both sides have."""
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit("the two sides share no s<seed>-t<target> pair")
    rows = []
    for key in common:
        sa, sb = scores(a[key], take), scores(b[key], take)
        if sa["image_set"] != sb["image_set"]:
            raise SystemExit(f"pair {key}: the two attacks scored different evaluation images")
        rows.append(
            {
                "pair": key,
                "a_point": a[key]["point"],
                "b_point": b[key]["point"],
                "a": {"psnr": sa["psnr"], "ssim": sa["ssim"]},
                "b": {"psnr": sb["psnr"], "ssim": sb["ssim"]},
                "d_psnr": sb["psnr"] - sa["psnr"],
                "d_ssim": sb["ssim"] - sa["ssim"],
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    d_psnr = [r["d_psnr"] for r in rows]
    d_ssim = [r["d_ssim"] for r in rows]
    return {
        "pairs": len(rows),
        "b_lower_psnr": sum(d < 0 for d in d_psnr),
        "b_lower_ssim": sum(d < 0 for d in d_ssim),
        "median_d_psnr": statistics.median(d_psnr),
        "median_d_ssim": statistics.median(d_ssim),
        "range_d_psnr": [min(d_psnr), max(d_psnr)],
        "range_d_ssim": [min(d_ssim), max(d_ssim)],
        # A two-sided sign test's smallest p-value with n pairs: 2 / 2**n.
        "smallest_sign_test_p": min(1.0, 2 / 2 ** len(rows)),
    }


def markdown(
    rows: list[dict[str, Any]], s: dict[str, Any], name: str, take: str = "stronger"
) -> str:
    what = (
        "The attack `attacker_strength.py` ran on each point"
        if take == "stronger"
        else "Per metric, the higher of the frontier's light black-box and the attack "
        "`attacker_strength.py` ran (read on the evaluation images: the worst case for each "
        "edge, flattering the attacker on both sides)"
    )
    lines = [
        f"# Two methods under the same stronger attacker, paired: {name}",
        "",
        f"{what}, paired by target and seed, same evaluation images. "
        "d = B - A (negative: B leaks less).",
        "",
        "| pair | A point | A PSNR / SSIM | B point | B PSNR / SSIM | d PSNR (dB) | d SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['a_point']} | {r['a']['psnr']:.2f} / {r['a']['ssim']:.3f} "
            f"| {r['b_point']} | {r['b']['psnr']:.2f} / {r['b']['ssim']:.3f} "
            f"| {r['d_psnr']:+.2f} | {r['d_ssim']:+.3f} |"
        )
    lines += [
        "",
        f"B leaks less in PSNR on {s['b_lower_psnr']} of {s['pairs']} pairs and in SSIM on "
        f"{s['b_lower_ssim']}; median d {s['median_d_psnr']:+.2f} dB "
        f"({s['range_d_psnr'][0]:+.2f} to {s['range_d_psnr'][1]:+.2f}), "
        f"{s['median_d_ssim']:+.3f} SSIM. With {s['pairs']} pairs a two-sided sign test "
        f"cannot go below p = {s['smallest_sign_test_p']:.3g}: an effect size for a rule fixed "
        "beforehand, not a significance claim.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    side = {k: [Path(f) for f in getattr(args, k).split(",") if f.strip()] for k in ("a", "b")}
    rows = pair_rows(
        points_by_pair(side["a"], args.a_prefix),
        points_by_pair(side["b"], args.b_prefix),
        args.take,
    )
    s = summary(rows)
    text = markdown(rows, s, args.name, args.take)
    print(text, end="")
    record = {
        "a": [str(f) for f in side["a"]],
        "b": [str(f) for f in side["b"]],
        "take": args.take,
        "rows": rows,
        "summary": s,
    }
    write_results(args.out / f"paired_strength_{args.name}", record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
