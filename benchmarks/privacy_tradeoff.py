"""Privacy-utility trade-off: PATROL against the baselines, the shape of the paper's Fig. 5.

For one dataset recipe (the quickstart's generated vehicles, or Fashion-MNIST)
this script builds, in ``--work``, everything the comparison needs and resumes
whatever already exists:

1. the PATROL run of the recipe (target -> PATROL -> removal -> recovery), at
   ``patrol.split`` within the budget of the unpruned ``budget.fit_split`` edge;
2. the pruning-only run at the same budget from the same target (no Lipschitz,
   no adversary; Table II's first row);
3. optionally (``--low-ratio``) PATROL one block shallower at the same budget
   (Tables IV-V: low vs high pruning ratio);
4. the baseline sweeps (noise, dropout, skip, APP) on the target at the fit
   split, through ``patrol_compress.defenses``;
5. one attack configuration for every point: the undefended target at splits
   1 and ``fit_split``, PATROL, pruning-only and every baseline strength.

It then writes ``privacy_tradeoff_<dataset>.json`` and ``.md`` (the goal
numbers: PSNR/SSIM reduction against the undefended fit split, accuracy cost,
margin over pruning-only, and whether PATROL sits below each baseline's curve)
and the report (HTML, markdown, plot) of all points into ``--out``.

The attacker is the attack command's: every decoder family (mirror,
fixed-width upsample, lift for tiny maps), each trained on the attacker's
images until its validation PSNR plateaus (``--attack-epochs`` is only the
ceiling), and rMLE from grey and from the strongest decoder. What 2 CPU cores
cannot afford is made explicit and recorded in the results: ``--attack-images``
caps the attacker's images (default: all the source has) and
``--base-width``/``--min-width`` size the decoders. Every point gets the same
attacker, and each result says whether its attack beat the label-only floor.

    python benchmarks/privacy_tradeoff.py                      # quickstart
    python benchmarks/privacy_tradeoff.py --dataset fashion-mnist --no-sweeps
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from patrol_compress.frontier.points import (
    add_attack_options,
    attack_point,
    attack_settings,
    attack_summary,
    ensure_prune,
    from_target,
)
from patrol_compress.io import read_json, write_json, write_text
from patrol_compress.provenance import provenance
from patrol_compress.recipe import load_recipe, with_privacy_terms

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {
    "quickstart": ROOT / "recipes" / "quickstart.yaml",
    "fashion-mnist": ROOT / "recipes" / "fashion_mnist_small.yaml",
}
GOAL = {"psnr_drop_pct": 30.0, "ssim_drop_pct": 20.0, "max_acc_cost_pts": 2.0}
GOAL_VS_PRUNING = {"psnr_db": 2.0, "ssim": 0.05, "acc_within_pts": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dataset", choices=sorted(RECIPES), default="quickstart")
    p.add_argument("--recipe", type=Path, default=None, help="override the dataset's recipe")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "tradeoff")
    p.add_argument("--out", type=Path, default=RESULTS)
    add_attack_options(p)
    p.add_argument("--attacks", default="blackbox,whitebox")
    p.add_argument("--defenses", default="noise,dropout,skip,app")
    p.add_argument("--no-sweeps", action="store_true", help="skip the baseline sweeps")
    p.add_argument(
        "--undefended-splits",
        default="",
        help="comma-separated splits of the undefended target to attack (default: 1 and the "
        "budget's fit split, which the goal numbers need)",
    )
    p.add_argument("--low-ratio", action="store_true", help="also PATROL one block shallower")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=RECIPE",
        help="another PATROL recipe (e.g. stronger privacy weights) pruned from the same "
        "target and attacked like the others; repeatable",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--tag",
        default="",
        help="name of this attack setting: points go to WORK/<dataset>/points-<tag>, results "
        "to privacy_tradeoff_<dataset>_<tag>.* (the runs themselves are shared)",
    )
    return p.parse_args(argv)


def below_curve(point: dict[str, Any], series: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The series' ``key`` at the point's accuracy (linear in accuracy), and the verdict.

    A series that never reaches the point's accuracy cannot match it: the point
    is below it there (dominates). Below the series' lowest accuracy the
    series' value at that lowest accuracy is used (flat extrapolation).
    """
    acc = point["accuracy"]["value"]
    pts = sorted((p["accuracy"]["value"], p["strongest"][key]) for p in series)
    if acc > pts[-1][0]:
        return {"at_accuracy": None, "below": True, "why": "no strength reaches this accuracy"}
    if acc <= pts[0][0]:
        value = pts[0][1]
    else:
        value = pts[-1][1]
        for (a0, v0), (a1, v1) in zip(pts, pts[1:], strict=False):
            if a0 <= acc <= a1:
                value = v0 if a1 == a0 else v0 + (v1 - v0) * (acc - a0) / (a1 - a0)
                break
    return {"at_accuracy": value, "below": point["strongest"][key] < value}


def summarise(
    points: dict[str, dict[str, Any]], fit: int, patrol: str = "patrol"
) -> dict[str, Any]:
    """The goal numbers of the issue for the PATROL point ``patrol``."""
    base = points[f"none-split{fit}"]
    pat = points[patrol]
    po = points.get("pruning-only")

    def acc(p: dict[str, Any]) -> float:
        return float(p["accuracy"]["value"])

    out: dict[str, Any] = {
        "undefended": {"split": fit, "accuracy": acc(base), **base["strongest"]},
        "patrol": {"split": pat["split"], "accuracy": acc(pat), **pat["strongest"]},
        "psnr_drop_pct": 100
        * (base["strongest"]["psnr"] - pat["strongest"]["psnr"])
        / base["strongest"]["psnr"],
        "ssim_drop_pct": 100
        * (base["strongest"]["ssim"] - pat["strongest"]["ssim"])
        / base["strongest"]["ssim"],
        "acc_cost_pts": 100 * (acc(base) - acc(pat)),
    }
    out["goal_met_vs_undefended"] = (
        out["psnr_drop_pct"] >= GOAL["psnr_drop_pct"]
        and out["ssim_drop_pct"] >= GOAL["ssim_drop_pct"]
        and out["acc_cost_pts"] <= GOAL["max_acc_cost_pts"]
    )
    if po is not None:
        d = {
            "accuracy": acc(po),
            **po["strongest"],
            "psnr_margin_db": po["strongest"]["psnr"] - pat["strongest"]["psnr"],
            "ssim_margin": po["strongest"]["ssim"] - pat["strongest"]["ssim"],
            "acc_diff_pts": 100 * (acc(pat) - acc(po)),
        }
        d["goal_met"] = (
            d["psnr_margin_db"] >= GOAL_VS_PRUNING["psnr_db"]
            and d["ssim_margin"] >= GOAL_VS_PRUNING["ssim"]
        )
        d["accuracy_matched"] = abs(d["acc_diff_pts"]) <= GOAL_VS_PRUNING["acc_within_pts"]
        out["vs_pruning_only"] = d
    curves: dict[str, Any] = {}
    not_baselines = {"none", "patrol", "pruning-only", "pruning+lip", "pruning+adv"}
    for name in sorted({p["series"] for p in points.values()} - not_baselines):
        series = [p for p in points.values() if p["series"] == name] + [base]
        curves[name] = {
            "psnr": below_curve(pat, series, "psnr"),
            "ssim": below_curve(pat, series, "ssim"),
        }
    out["below_baseline_curves"] = curves
    out["below_every_curve"] = bool(curves) and all(
        c["psnr"]["below"] and c["ssim"]["below"] for c in curves.values()
    )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Privacy-utility trade-off: {report['dataset']}",
        "",
        f"Command: `{report['command']}` ({report['threads']} thread(s), "
        f"this invocation {report['seconds'] / 60:.0f} min, all the compute behind the points "
        f"{report['compute_seconds'] / 60:.0f} min, points made earlier are reused). "
        f"Attack: {report['attack_summary']}. "
        "Strongest attack = the highest PSNR among the attacks run on that point.",
        "",
        "| point | split | series | accuracy | strongest (family) | PSNR dB | SSIM | attack acc |"
        " epochs | edge params | bytes sent/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in report["points"].items():
        s = p["strongest"]
        a = p["attacks"][s["attack"]]
        aa = a.get("attack_accuracy")
        failed = "" if s.get("converged", True) else " **FAILED**"
        lines.append(
            f"| {name} | {p['split']} | {p['series']} | "
            f"{p['accuracy']['metric']} {p['accuracy']['value'] * 100:.1f}% | "
            f"{s['attack']} ({s.get('family') or '-'}){failed} | "
            f"{s['psnr']:.2f} | {s['ssim']:.3f} | "
            f"{'-' if aa is None else f'{aa * 100:.1f}%'} | {_epochs(p)} | "
            f"{p['edge']['params']:,} | {p['edge']['bytes_sent']:,} |"
        )
    first = next(iter(report["points"].values()))
    mean, label = first["mean_image"], first.get("label_only")
    lines += [
        "",
        f"Floors (the attacker learned nothing from the features): mean image PSNR "
        f"{mean['psnr']:.2f} dB / SSIM {mean['ssim']:.3f}"
        + (
            ""
            if label is None
            else f"; label only (the class's or identity's mean image) {label['psnr']:.2f} dB / "
            f"SSIM {label['ssim']:.3f}"
        )
        + ". An attack at or below the higher floor is marked FAILED.",
        "",
        "Epochs: per black-box decoder family, epochs run until the validation PSNR plateaued.",
    ]
    for plot in report.get("plots", []):
        lines += ["", f"![privacy-utility plane]({plot})"]
    if report.get("report_html"):
        lines += [
            "",
            f"Full report with every reconstruction grid: `{report['report_html']}` "
            f"(`patrol-compress report <points folder>` rebuilds it).",
        ]
    goals = {"patrol": report["goal"], **report.get("variant_goals", {})}
    for name, g in goals.items():
        lines += ["", f"## Goal: {name}", "", *goal_lines(g)]
    return "\n".join(lines) + "\n"


def _epochs(point: dict[str, Any]) -> str:
    fams = point["attacks"].get("blackbox", {}).get("info", {}).get("families", {})
    return ", ".join(f"{f} {r['epochs_run']}" for f, r in fams.items()) or "-"


def compute_seconds(points: dict[str, dict[str, Any]], work: Path) -> float:
    """Seconds spent on everything behind the points, whenever it ran: prune stages
    (stages.json of every run under ``work``), defenses and attacks (their attack.json)."""
    total = 0.0
    for stages in work.glob("*/stages.json"):
        total += sum(float(v.get("seconds", 0.0)) for v in read_json(stages).values())
    for p in points.values():
        total += float(p.get("defense_seconds") or 0.0)
        total += float(p.get("recogniser", {}).get("seconds") or 0.0)
        total += sum(float(a.get("seconds") or 0.0) for a in p["attacks"].values())
    return total


def title(args: argparse.Namespace) -> str:
    return f"Privacy-utility trade-off: {args.dataset} (benchmarks/privacy_tradeoff.py)"


def goal_lines(g: dict[str, Any]) -> list[str]:
    lines = [
        f"- PATROL split {g['patrol']['split']} vs undefended split {g['undefended']['split']}: "
        f"PSNR -{g['psnr_drop_pct']:.1f}% (goal >= {GOAL['psnr_drop_pct']:.0f}%), "
        f"SSIM -{g['ssim_drop_pct']:.1f}% (goal >= {GOAL['ssim_drop_pct']:.0f}%), "
        f"accuracy cost {g['acc_cost_pts']:+.1f} points (goal <= {GOAL['max_acc_cost_pts']:.0f})"
        f": **{'met' if g['goal_met_vs_undefended'] else 'not met'}**."
    ]
    if "vs_pruning_only" in g:
        d = g["vs_pruning_only"]
        lines.append(
            f"- vs pruning-only at the same budget: PSNR margin {d['psnr_margin_db']:+.2f} dB "
            f"(goal >= {GOAL_VS_PRUNING['psnr_db']}), SSIM margin {d['ssim_margin']:+.3f} "
            f"(goal >= {GOAL_VS_PRUNING['ssim']}), accuracy PATROL - pruning-only "
            f"{d['acc_diff_pts']:+.1f} points (matched within 0.5: "
            f"{'yes' if d['accuracy_matched'] else 'no'}): "
            f"**{'met' if d['goal_met'] else 'not met'}**."
        )
    for name, c in g["below_baseline_curves"].items():
        parts = []
        for key in ("psnr", "ssim"):
            v = c[key]
            at = "unreachable" if v["at_accuracy"] is None else f"{v['at_accuracy']:.3f}"
            parts.append(f"{key.upper()} {at} -> {'below' if v['below'] else 'NOT below'}")
        lines.append(f"- {name} curve at PATROL's accuracy: " + "; ".join(parts))
    if g["below_baseline_curves"]:
        lines.append(
            f"- below every baseline curve: **{'yes' if g['below_every_curve'] else 'no'}**"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    # "patrol" is the paper's method: both privacy terms on, whatever the recipe ships.
    recipe = with_privacy_terms(load_recipe(args.recipe or RECIPES[args.dataset]))
    budget = recipe.patrol.budget
    fit = budget.fit_split if budget is not None and budget.fit_split else 2
    work = args.work / args.dataset
    cfg = attack_settings(recipe.attack, args)
    attacks = [a for a in args.attacks.split(",") if a]

    patrol = ensure_prune(recipe, work / "patrol", log)
    target = patrol / "target"
    pruning_only = ensure_prune(
        from_target(
            recipe,
            "pruning_only",
            target,
            lipschitz={"enabled": False},
            adversarial={"enabled": False},
        ),
        work / "pruning_only",
        log,
    )
    pts = work / ("points" + (f"-{args.tag}" if args.tag else ""))
    points: dict[str, dict[str, Any]] = {}
    splits = {int(k) for k in args.undefended_splits.split(",") if k} or {1}
    for k in sorted(splits | {fit}):
        points[f"none-split{k}"] = attack_point(
            target, k, cfg, attacks, pts / f"none-split{k}", log
        )
    points["patrol"] = attack_point(patrol, recipe.patrol.split, cfg, attacks, pts / "patrol", log)
    points["pruning-only"] = attack_point(
        pruning_only, recipe.patrol.split, cfg, attacks, pts / "pruning-only", log
    )
    variants: list[str] = []
    for spec in args.variant:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise SystemExit(f"--variant: expected NAME=RECIPE, found '{spec}'")
        v_recipe = from_target(load_recipe(path), name, target)
        v_run = ensure_prune(v_recipe, work / f"variant-{name}", log)
        key = f"patrol-{name}"
        points[key] = attack_point(
            v_run, v_recipe.patrol.split, cfg, attacks, pts / key, log, label=f"PATROL {name}"
        )
        variants.append(key)
    if args.low_ratio and recipe.patrol.split - 1 > fit:
        k = recipe.patrol.split - 1
        low = ensure_prune(
            from_target(
                recipe,
                "low_ratio",
                target,
                split=k,
                lipschitz={"alphas": recipe.patrol.lipschitz.alphas[:k]},
            ),
            work / "low_ratio",
            log,
        )
        points["patrol-low-ratio"] = attack_point(
            low, k, cfg, attacks, pts / "patrol-low-ratio", log
        )
    if not args.no_sweeps:
        from patrol_compress.defenses import defend

        summary = defend(
            patrol,
            [d for d in args.defenses.split(",") if d],
            split=fit,
            attacks=attacks,
            out=pts / "defenses",
            include_undefended=False,
            log=log,
            config=cfg,
        )
        for p in summary["points"]:
            points[p["folder"]] = dict(read_json(pts / "defenses" / p["folder"] / "attack.json"))

    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    report = {
        "command": f"python benchmarks/{command}",
        "dataset": args.dataset,
        "threads": args.threads,
        "seconds": time.perf_counter() - started,
        "compute_seconds": compute_seconds(points, work),
        "attack_summary": attack_summary(cfg, attacks),
        "goal": summarise(points, fit),
        "variant_goals": {v: summarise(points, fit, v) for v in variants},
        "points": points,
        "provenance": provenance(f"python benchmarks/{command}"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"privacy_tradeoff_{args.dataset.replace('-', '_')}" + (
        f"_{args.tag}" if args.tag else ""
    )
    # The full report (grids of every point, megabytes of PNG) stays next to the
    # points; the results folder gets the numbers and the two planes.
    from patrol_compress.report import build_report

    page = work / f"report{'-' + args.tag if args.tag else ''}.html"
    files = build_report([pts], page, title=title(args), force=True)
    log(f"wrote {files.html}, {files.markdown} and {files.assets}/")
    report["plots"] = []
    for key in ("psnr", "ssim"):
        name = f"{stem}_{key}.svg"
        write_text(args.out / name, (files.assets / f"plane-{key}.svg").read_text("utf-8"))
        report["plots"].append(name)
    report["report_html"] = str(files.html)
    write_json(args.out / f"{stem}.json", report)
    write_text(args.out / f"{stem}.md", markdown(report))
    log(f"wrote {args.out / stem}.json, .md and the planes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
