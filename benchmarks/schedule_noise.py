"""Does a PATROL setting change results beyond run-to-run noise? Seeds x values, one attack.

Why: a speed-up that changes what PATROL computes (e.g. refitting the surrogate
attacker less often, ``patrol.adversarial.adversary_every``) is acceptable only
if accuracy and leakage move less than they do between seeds. For every value
of ``--key`` and every seed this script prunes the recipe with the paper's
terms on (as ``training_overhead.py`` times them), from one trained target,
and attacks the split-4 edge with the attack of ``privacy_tradeoff.py``; it
then prints, per value, the mean over seeds and the seed-to-seed spread of
rank-1/top-1, mAP and the strongest attack's PSNR and SSIM, and the
difference of each value's mean from the first value's.

    python benchmarks/schedule_noise.py --target runs/tradeoff/quickstart/patrol/target \\
        --key adversarial.adversary_every --values 4,10 --seeds 0,1

Runs and attacks are kept in ``--work`` and reused when the script is re-run.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import privacy_tradeoff as pt  # noqa: E402  (the shared run/attack helpers)

from patrol_compress.io import package_versions, write_json, write_text  # noqa: E402
from patrol_compress.recipe import load_recipe, with_privacy_terms  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "mAP", "psnr", "ssim")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    p.add_argument("--target", type=Path, required=True, help="a trained target's folder")
    p.add_argument("--key", default="adversarial.adversary_every", help="patrol.<section>.<key>")
    p.add_argument("--values", default="4,10", help="comma-separated values; the first is the base")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "schedule_noise")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="schedule_noise")
    p.add_argument(
        "--attack-args",
        default="--base-width 64 --min-width 16",
        help="privacy_tradeoff.py's attack options (the attacker of its quickstart results)",
    )
    p.add_argument("--attacks", default="blackbox,whitebox")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def point(
    args: argparse.Namespace, value: int | float, seed: int, log: Any
) -> dict[str, float | str]:
    recipe = with_privacy_terms(load_recipe(args.recipe))
    section, key = args.key.split(".", 1)
    r = pt.derived(recipe, f"{key}{value}s{seed}", args.target, **{section: {key: value}})
    r = r.model_copy(update={"seed": seed})
    where = args.work / f"{key}{value}-seed{seed}"
    run = pt.ensure_prune(r, where / "run", log)
    cfg = pt.attack_config(pt.parse_args(shlex.split(args.attack_args)), recipe.attack)
    attacks = args.attacks.split(",")
    rep = pt.attack_point(run, r.patrol.split, cfg, attacks, where / "point", log, where.name)
    s = rep["strongest"]
    acc = rep["accuracy"]
    return {
        "accuracy": 100 * acc["value"],
        "metric": acc["metric"],
        "mAP": 100 * acc.get("all", {}).get("mAP", float("nan")),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "attack": f"{s['attack']}/{s.get('family')}",
    }


def _number(text: str) -> int | float:
    """A setting's value as written: ``10`` stays an int, ``0.125`` and ``1e-3`` are floats."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    values = [_number(v) for v in args.values.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    def log(text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    points = {(v, s): point(args, v, s, log) for v in values for s in seeds}
    summary: list[dict[str, Any]] = []
    for v in values:
        row: dict[str, Any] = {"value": v}
        for m in METRICS:
            xs = [float(points[v, s][m]) for s in seeds]
            row[m] = statistics.mean(xs)
            row[f"{m}_spread"] = max(xs) - min(xs)
        summary.append(row)
    base = summary[0]
    for row in summary:
        for m in METRICS:
            row[f"{m}_diff"] = row[m] - base[m]
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    write_json(
        args.out / f"{args.name}.json",
        {
            "command": f"python benchmarks/{command}",
            "key": f"patrol.{args.key}",
            "points": [{"value": v, "seed": s, **points[v, s]} for v, s in points],
            "summary": summary,
            "versions": package_versions(),
        },
    )
    lines = [
        f"# Does `patrol.{args.key}` change results beyond seed noise?",
        "",
        f"Command: `python benchmarks/{command}` (paper's terms on; one target; "
        f"split-4 edge attacked by privacy_tradeoff.py's suite).",
        "",
        "| value | seed | accuracy | mAP | strongest attack | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v} | {s} | {p['accuracy']:.1f}% | {p['mAP']:.1f}% | {p['attack']} | "
        f"{p['psnr']:.2f} | {p['ssim']:.3f} |"
        for (v, s), p in points.items()
    ]
    lines += [
        "",
        f"Mean over seeds (seed-to-seed spread), and difference from {values[0]}:",
        "",
        "| value | accuracy | mAP | PSNR dB | SSIM |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['value']} | "
        + " | ".join(
            f"{r[m]:.{3 if m == 'ssim' else 2}f} ({r[m + '_spread']:.{3 if m == 'ssim' else 2}f}; "
            f"{r[m + '_diff']:+.{3 if m == 'ssim' else 2}f})"
            for m in METRICS
        )
        + " |"
        for r in summary
    ]
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
