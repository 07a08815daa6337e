"""Training overhead of PATROL: seconds per PATROL epoch over a plain fine-tuning epoch.

Both are measured in the same run, on the same data, model and batch sampler,
through the project's own stages: ``train_target`` (the plain supervised
step) and the recipe's PATROL stage itself, i.e. the pruner
``pipeline.training_pruner`` builds (the recipe's structure: ``round_to``,
``rank``, budget, surrogate, uplink) driven by ``patrol_finetune`` (masks +
FISTA, fused Lipschitz pass, surrogate attacker with its periodic retraining,
budget steering). A PATROL "epoch" is averaged over ``adversary_every``
epochs so the surrogate's retraining is amortised as it is in a real run.
The two are timed ``--repeats`` times, interleaved; the headline is the
median of the paired ratios (each repeat's PATROL time over the plain time
measured just before it), since a busy or drifting machine moves the ratio
by about 10% between repeats here; the load average is printed too.

Target (issue): <= 2.0x at split 4.

    python benchmarks/training_overhead.py                     # quickstart recipe, splits 1-4
    python benchmarks/training_overhead.py --splits 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from patrol_compress.data import build_data
from patrol_compress.io import write_json, write_text
from patrol_compress.pipeline import fresh_model, training_pruner
from patrol_compress.provenance import provenance
from patrol_compress.pruning.patrol import patrol_finetune
from patrol_compress.recipe import Recipe, dump_recipe, load_recipe, with_privacy_terms
from patrol_compress.train.target import train_target

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    p.add_argument("--splits", default="1,2,3,4")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--terms",
        choices=("paper", "recipe"),
        default="paper",
        help="paper: both privacy terms on (the paper's PATROL epoch, the issue's 2.0x goal); "
        "recipe: the recipe as shipped (plain pruning: masks, FISTA and steering only)",
    )
    p.add_argument("--name", default="training_overhead", help="results file stem")
    return p.parse_args(argv)


def time_plain(recipe: Recipe, data: Any, epochs: int, folder: Path) -> float:
    model = fresh_model(recipe, data)
    cfg = recipe.train.model_copy(update={"epochs": epochs, "warmup_epochs": 0})
    start = time.perf_counter()
    train_target(model, data, cfg, folder, recipe.seed, quiet=True)
    return (time.perf_counter() - start) / epochs


def time_patrol(recipe: Recipe, data: Any, split: int, epochs: int, folder: Path) -> float:
    """Seconds per epoch of the recipe's own PATROL stage at ``split`` (no shortcut)."""
    budget = recipe.patrol.budget
    if budget is not None and (budget.fit_split or 0) >= split:
        budget = None  # a shallower split has no smaller split's budget to fit
    patrol = recipe.patrol.model_copy(update={"split": split, "epochs": epochs, "budget": budget})
    r = recipe.model_copy(update={"patrol": patrol})
    pruner = training_pruner(r, data, fresh_model(r, data), None)
    start = time.perf_counter()
    patrol_finetune(pruner, data, r, folder, pruner.budget, False, True)
    return (time.perf_counter() - start) / epochs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # By default a PATROL epoch is the paper's: both privacy terms on, whatever the
    # recipe ships; --terms recipe times the shipped (plain pruning) stage instead.
    recipe = load_recipe(args.recipe)
    if args.terms == "paper":
        recipe = with_privacy_terms(recipe)
    data = build_data(recipe.data)
    splits = [int(s) for s in args.splits.split(",")]
    epochs = max(recipe.patrol.adversarial.adversary_every, 1)
    plain: list[float] = []
    patrol: dict[int, list[float]] = {k: [] for k in splits}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            plain.append(time_plain(recipe, data, epochs, Path(tmp) / f"plain{rep}"))
            for k in splits:
                patrol[k].append(time_patrol(recipe, data, k, epochs, Path(tmp) / f"p{k}-{rep}"))
    base = statistics.median(plain)
    rows: list[dict[str, Any]] = []
    for k in splits:
        sec = statistics.median(patrol[k])
        # Each repeat's PATROL time over the plain time measured just before it:
        # the headline is their median, their range how far the machine moved it.
        paired = [p / q for p, q in zip(patrol[k], plain, strict=True)]
        rows.append(
            {
                "split": k,
                "patrol_s_per_epoch": sec,
                "plain_s_per_epoch": base,
                "ratio": statistics.median(paired),
                "ratio_of_medians": sec / base,
                "ratio_per_repeat": paired,
            }
        )
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    report = {
        "command": f"python benchmarks/{command}",
        "recipe": str(args.recipe),
        "terms": args.terms,
        "threads": args.threads,
        "repeats": args.repeats,
        "epochs_averaged": epochs,
        "train_images": len(data.train),
        "provenance": provenance(f"python benchmarks/{command}", dump_recipe(recipe)),
        "rows": rows,
        "target_ratio_split4": 2.0,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", report)
    lines = [
        "# PATROL training overhead",
        "",
        f"Privacy terms: {args.terms} "
        + ("(Lipschitz and adversarial on)" if args.terms == "paper" else "(as the recipe ships)"),
        "",
        f"Command: `{report['command']}` ({args.threads} threads, median of {args.repeats}, "
        f"{epochs} epochs each so surrogate retraining is amortised).",
        "",
        f"Load average (1/5/15 min) at start {_load(load_start)}, at end "
        f"{_load(report['load_average_end'])}.",
        "",
        "| split | PATROL s/epoch | plain s/epoch | median paired ratio | paired (min-max) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['split']} | {r['patrol_s_per_epoch']:.2f} | {r['plain_s_per_epoch']:.2f} | "
        f"{r['ratio']:.2f}x | {min(r['ratio_per_repeat']):.2f}-{max(r['ratio_per_repeat']):.2f}x |"
        for r in rows
    ]
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{a:.2f}" for a in avg)


if __name__ == "__main__":
    raise SystemExit(main())
