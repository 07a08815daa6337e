"""``patrol-compress frontier``: build, attack and compare the points of a privacy frontier.

For one recipe, every method (:mod:`~patrol_compress.frontier.methods`) is run at
every value of its knob, on every target seed (a target trained with that
seed) and every seed (the pruning's), from the same trained targets and with
the same attack; the undefended targets are attacked at the reference splits
alike. Then the methods are compared with plain pruning at matched accuracy
(:mod:`~patrol_compress.frontier.compare`).

Everything is resumable: a finished target, pruned run, attacked point or
attack part is kept, so an interrupted frontier continues where it stopped.
The work folder remembers the resolved recipe and attack settings it was
started with and refuses to mix points made under others. Stages (``targets``,
``points`` with ``--shard I/N``, ``collect``) let several processes share the
work. Each point records its provenance (device, versions, commit, command,
recipe and weight hashes; :mod:`patrol_compress.provenance`), and the resolved
recipe is written beside the results, so a later change of a shipped recipe
cannot change what a result means.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from patrol_compress.config.privacy import AttackConfig
from patrol_compress.config.recipe import Recipe, dump_recipe
from patrol_compress.contracts import ATTACK_FILE, MODEL_FILE
from patrol_compress.errors import PatrolError
from patrol_compress.frontier.compare import Record, compare
from patrol_compress.frontier.methods import BASELINE, METHODS
from patrol_compress.frontier.plan import (
    FrontierError,
    Knob,
    Point,
    check_methods,
    check_seeds,
    parse_knobs,
    plan_points,
    point_recipe,
)
from patrol_compress.frontier.points import (
    PROVENANCE_FILE,
    attack_point,
    attack_summary,
    ensure_prune,
    ensure_target,
    write_provenance,
)
from patrol_compress.frontier.render import comparison_line, summary_table, svg
from patrol_compress.io import read_json, write_json, write_text
from patrol_compress.provenance import provenance, text_sha256

PINNED_RECIPE = "frontier.recipe.yaml"
"""The work folder's recipe, the frontier's attack settings in its ``attack:`` section."""
STAGES = ("all", "targets", "points", "collect")
GOAL = {"psnr": 1.5, "ssim": 0.05}
"""Margins at matched accuracy the project asks of a method over plain pruning (dB, SSIM)."""


@dataclass
class FrontierPlan:
    """A validated frontier: what to build and how to attack it."""

    recipe: Recipe
    recipe_source: str
    methods: list[str]
    knobs: dict[str, Knob]
    seeds: list[int]
    target_seeds: list[int]
    references: list[int]
    attacks: list[str]
    attack: AttackConfig
    bootstrap: int
    name: str
    points: list[Point] = field(default_factory=list)


def make_plan(
    recipe: Recipe,
    recipe_source: str,
    methods: list[str] | None = None,
    knobs: list[str] | None = None,
    seeds: list[int] | None = None,
    target_seeds: list[int] | None = None,
    references: list[int] | None = None,
    attacks: list[str] | None = None,
    attack: AttackConfig | None = None,
    bootstrap: int | None = None,
    name: str | None = None,
) -> FrontierPlan:
    """The plan from the recipe's ``frontier:`` section, each argument given overriding it.

    Everything is checked here, before any work: methods, knobs (every
    point's recipe is built), seeds, reference splits and attack names.
    """
    from patrol_compress.attacks.base import ATTACKS
    from patrol_compress.registry import RegistryError

    f = recipe.frontier
    methods = list(methods if methods is not None else f.methods)
    check_methods(methods)
    seeds = list(seeds if seeds is not None else f.seeds)
    target_seeds = list(target_seeds if target_seeds is not None else f.target_seeds)
    check_seeds(seeds, target_seeds)
    parsed = parse_knobs(list(knobs if knobs is not None else f.knobs), methods)
    budget = recipe.patrol.budget
    default_refs = sorted(
        {budget.fit_split if budget and budget.fit_split else 2, recipe.patrol.split}
    )
    refs = list(references if references is not None else (f.references or default_refs))
    for k in refs:
        if not 1 <= k <= 8:
            raise FrontierError(f"--references {k}: expected a split between 1 and 8")
    names = list(attacks if attacks is not None else f.attacks)
    for a in names:
        try:
            ATTACKS.get(a)
        except RegistryError as exc:
            raise FrontierError(f"--attacks: {exc}") from None
    plan = FrontierPlan(
        recipe=recipe,
        recipe_source=recipe_source,
        methods=methods,
        knobs=parsed,
        seeds=seeds,
        target_seeds=target_seeds,
        references=refs,
        attacks=names,
        attack=attack if attack is not None else recipe.attack,
        bootstrap=bootstrap if bootstrap is not None else f.bootstrap,
        name=name or recipe.name,
    )
    plan.points = plan_points(recipe, methods, parsed, seeds, target_seeds)
    return plan


def _pin(work: Path, plan: FrontierPlan) -> Recipe:
    """Remember the recipe (with the frontier's attack) a work folder was started with.

    A later run must mean the same: the pinned file, read by today's schema,
    must equal the recipe given. Fields the schema gained since, at their
    defaults, change nothing and are accepted; anything else is refused.
    Returns the recipe every point is built from.
    """
    from patrol_compress.config.recipe import parse_recipe

    recipe = plan.recipe.model_copy(update={"attack": plan.attack})
    path = work / PINNED_RECIPE
    if path.is_file():
        try:
            pinned = parse_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
        except (PatrolError, yaml.YAMLError):
            pinned = None
        if pinned is None or pinned.model_dump(mode="json") != recipe.model_dump(mode="json"):
            raise FrontierError(
                f"{path}: this work folder was started with another recipe or attack setting; "
                "its points would not be comparable: use another --work or --name"
            )
    else:
        write_text(path, dump_recipe(recipe))
    return recipe


class Progress:
    """``[frontier 1h02m] ...`` lines with the time left, from the points made so far."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.started = time.perf_counter()
        self.made: list[float] = []

    def say(self, text: str) -> None:
        from patrol_compress.attacks.progress import fmt_seconds

        if self.log is not None:
            self.log(f"[frontier {fmt_seconds(time.perf_counter() - self.started)}] {text}")

    def eta(self, left: int) -> str:
        from patrol_compress.attacks.progress import fmt_seconds

        if not self.made:
            return "time left unknown until the first point is made"
        return f"~{fmt_seconds(float(np.mean(self.made)) * left)} left"


def _target(plan: FrontierPlan, work: Path, t: int, progress: Progress) -> Path:
    recipe = plan.recipe.model_copy(update={"seed": t, "name": f"{plan.recipe.name}_t{t}"})
    return ensure_target(recipe, work / "targets" / f"t{t}", progress.say)


def _reference(
    plan: FrontierPlan, work: Path, t: int, k: int, command: str, progress: Progress
) -> dict[str, Any]:
    target = _target(plan, work, t, progress)
    folder = work / "points" / f"none-split{k}-t{t}"
    report = attack_point(
        target,
        k,
        plan.attack,
        plan.attacks,
        folder,
        progress.say,
        f"no defense split {k} t{t}",
        quiet=progress.log is None,
    )
    write_provenance(
        folder,
        plan.recipe.model_copy(update={"seed": t}),
        command,
        {"target": target / MODEL_FILE},
        point=folder.name,
    )
    return report


def _point(
    plan: FrontierPlan, work: Path, p: Point, command: str, progress: Progress
) -> dict[str, Any]:
    folder = work / "points" / p.name
    if (folder / ATTACK_FILE).is_file() and (folder / PROVENANCE_FILE).is_file():
        return dict(read_json(folder / ATTACK_FILE))
    target = _target(plan, work, p.target_seed, progress) / MODEL_FILE
    recipe = point_recipe(plan.recipe, p, target)
    run = ensure_prune(recipe, work / "runs" / p.name, progress.say)
    report = attack_point(
        run,
        recipe.patrol.split,
        plan.attack,
        plan.attacks,
        folder,
        progress.say,
        p.name,
        quiet=progress.log is None,
    )
    write_provenance(
        folder,
        recipe,
        command,
        {"target": target, "pruned": run / MODEL_FILE},
        point=p.name,
        method=p.method,
        knob=p.knob.label,
        value=p.value,
        seed=p.seed,
        target_seed=p.target_seed,
    )
    return report


def record_of(report: dict[str, Any], p: Point) -> Record:
    best = report["attacks"][report["strongest"]["attack"]]
    return Record(
        p.method,
        p.value,
        p.seed,
        p.target_seed,
        float(report["accuracy"]["value"]),
        list(best["per_image"]["psnr"]),
        list(best["per_image"]["ssim"]),
        (report.get("edge") or {}).get("uplink_bits_max"),
    )


Job = tuple[str, "Point | tuple[int, int]"]
"""A frontier job: a point, or a reference (target seed, split), by its folder name."""


def run_frontier(
    plan: FrontierPlan,
    work: Path,
    out: Path | None = None,
    stage: str = "all",
    shard: tuple[int, int] = (0, 1),
    command: str = "",
    log: Callable[[str], None] | None = print,
    stem: str | None = None,
) -> dict[str, Any] | None:
    """Make (or resume) the plan's targets and points and write the comparison.

    Returns what the results JSON holds (None for the ``targets`` and
    ``points`` stages, which only make things).
    """
    if stage not in STAGES:
        raise FrontierError(f"--stage {stage}: expected one of {', '.join(STAGES)}")
    index, count = shard
    if not 0 <= index < count:
        raise FrontierError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
    progress = Progress(log)
    if stage != "collect":  # before the work folder exists: a refused plan leaves nothing
        check_points(plan, [p for p in plan.points if not _made(work, p.name)])
    work.mkdir(parents=True, exist_ok=True)
    _pin(work, plan)
    if stage == "targets":
        for t in plan.target_seeds:
            _target(plan, work, t, progress)
        write_text(work / DEAL_STAMP, "")  # its time fixes what the next shards deal
        return None
    jobs: list[Job] = [
        (f"none-split{k}-t{t}", (t, k)) for t in plan.target_seeds for k in plan.references
    ]
    jobs += [(p.name, p) for p in plan.points]
    mine = jobs if stage != "points" else shard_jobs(jobs, _made_before_deal(work), index, count)
    reports: dict[str, dict[str, Any]] = {}
    for done, (name, what) in enumerate(mine):
        path = work / "points" / name / ATTACK_FILE
        if stage == "collect":
            if not path.is_file():
                raise FrontierError(f"--stage collect: {path} is missing; run the points first")
            reports[name] = dict(read_json(path))
            continue
        if _made(work, name):
            reports[name] = dict(read_json(path))
            continue
        progress.say(f"point {done + 1}/{len(mine)} {name}: {progress.eta(len(mine) - done)}")
        started = time.perf_counter()
        if isinstance(what, Point):
            reports[name] = _point(plan, work, what, command, progress)
        else:
            reports[name] = _reference(plan, work, what[0], what[1], command, progress)
        progress.made.append(time.perf_counter() - started)
    if stage == "points":
        return None
    return collect(plan, work, out or work, reports, command, stem, progress)


def check_points(plan: FrontierPlan, points: list[Point]) -> None:
    """Refuse, in one line, a point that ``prune`` would refuse, before any target is trained.

    Why: the plan validates every point's recipe against the schema, but a knob
    value can be valid and still unmeetable (``budget.uplink_bits=3`` when the
    narrowest crossing edge sends 8 bits); found at its point, it would stop the
    frontier after the targets and the earlier points had taken their minutes
    or hours. Each distinct architecture-and-``patrol:`` setting is checked once,
    on the untrained model (seeds change neither), through the same check
    ``prune`` runs (:func:`~patrol_compress.pipeline.check_prune`).
    """
    from patrol_compress.data import build_data
    from patrol_compress.pipeline import check_prune

    seen: set[str] = set()
    data = None
    for p in points:
        recipe = point_recipe(plan.recipe, p, None)
        key = json.dumps(
            [recipe.model.model_dump(mode="json"), recipe.patrol.model_dump(mode="json")],
            sort_keys=True,
        )
        if key in seen:
            continue
        seen.add(key)
        if data is None:
            data = build_data(recipe.data)
        try:
            check_prune(recipe, data)
        except PatrolError as exc:
            raise FrontierError(f"point {p.name}: {exc}") from None


DEAL_STAMP = "targets/.dealt"
"""Written when the targets stage ends; shards deal the points not made before it."""


def _made_before_deal(work: Path) -> Callable[[str], bool]:
    """Whether a point counts as made when shards deal the pending points: made before the
    last targets stage ended (:data:`DEAL_STAMP`), so every shard of one launch deals the
    same list however late it starts. Counted as made whenever it is, a tiny point that
    one shard finished before another had listed its own made the two lists differ, and
    both shards took the same point (measured: the launcher test failed 1-3 times in 5)."""
    stamp = work / DEAL_STAMP
    if not stamp.is_file():
        return lambda name: _made(work, name)
    dealt = stamp.stat().st_mtime_ns

    def made(name: str) -> bool:
        prov = work / "points" / name / PROVENANCE_FILE
        return _made(work, name) and prov.stat().st_mtime_ns <= dealt

    return made


def _made(work: Path, name: str) -> bool:
    """A point counts as made once its attack and its provenance are both on disk."""
    folder = work / "points" / name
    return (folder / ATTACK_FILE).is_file() and (folder / PROVENANCE_FILE).is_file()


def shard_jobs(jobs: list[Job], made: Callable[[str], bool], index: int, count: int) -> list[Job]:
    """Shard ``index`` of ``count``'s share of the jobs not yet made, dealt round-robin.

    Dealing the pending jobs, not all of them, is what lets shards share a resumed or extended
    frontier: dealt over every job, the four points added to a 22-point plan all fell to one
    shard while the other found nothing to do. ``made`` must give every shard of one launch
    the same answer: :func:`_made_before_deal` counts what was made before the launch's
    targets stage (``benchmarks/privacy_frontier_parallel.py`` runs it first).
    """
    pending = [job for job in jobs if not made(job[0])]
    return [job for i, job in enumerate(pending) if i % count == index]


def _references(plan: FrontierPlan, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    refs: dict[str, Any] = {}
    for k in plan.references:
        rs = [reports[f"none-split{k}-t{t}"] for t in plan.target_seeds]
        refs[f"split{k}"] = {
            "split": k,
            "replicates": ", ".join(f"t{t}" for t in plan.target_seeds),
            "accuracy": [float(r["accuracy"]["value"]) for r in rs],
            "psnr": [float(r["strongest"]["psnr"]) for r in rs],
            "ssim": [float(r["strongest"]["ssim"]) for r in rs],
            "uplink_bits": f"{int(rs[0]['edge'].get('uplink_bits_max') or 0):,}",
        }
    return refs


def collect(
    plan: FrontierPlan,
    work: Path,
    out: Path,
    reports: dict[str, dict[str, Any]],
    command: str,
    stem: str | None,
    progress: Progress,
) -> dict[str, Any]:
    """Compare the methods and write ``<stem>.{json,md}``, the planes and the report page."""
    stem = stem or f"frontier_{plan.name.replace('-', '_')}"
    records = [record_of(reports[p.name], p) for p in plan.points]
    first = reports[plan.points[0].name]
    floors = _floors(first, reports)
    refs = _references(plan, reports)
    recipe_text = dump_recipe(plan.recipe.model_copy(update={"attack": plan.attack}))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.recipe.yaml", recipe_text)
    metric_name = str(first["accuracy"]["metric"])
    result: dict[str, Any] = {
        "name": plan.name,
        "recipe": f"{stem}.recipe.yaml",
        "recipe_source": plan.recipe_source,
        "recipe_sha256": text_sha256(recipe_text),
        "command": command,
        "attack_summary": attack_summary(plan.attack, plan.attacks),
        "attack_config": plan.attack.model_dump(mode="json"),
        "accuracy_metric": metric_name,
        "methods": {m: METHODS.get(m).description for m in plan.methods},
        "knobs": {m: {"path": k.label, "values": list(k.values)} for m, k in plan.knobs.items()},
        "seeds": plan.seeds,
        "target_seeds": plan.target_seeds,
        "records": _record_rows(plan, records, reports, work),
        "references": refs,
        "reference_provenance": {
            f"split{k}-t{t}": _provenance_of(work, f"none-split{k}-t{t}")
            for k in plan.references
            for t in plan.target_seeds
        },
        "floors": floors,
        "image_set": first["strongest"].get("image_set"),
        "comparisons": {},
        "provenance": provenance(command, recipe_text),
    }
    lines = [
        f"# Privacy frontier: {plan.name}",
        "",
        f"Command: `{command}`; recipe `{result['recipe']}` (resolved from "
        f"`{plan.recipe_source}`, sha256 {result['recipe_sha256'][:12]}).",
        "",
        f"Attack: {result['attack_summary']}.",
        "",
        f"Replicates: target seeds {plan.target_seeds} x seeds {plan.seeds}; accuracy is "
        f"{metric_name}.",
        "",
        *summary_table(records, refs, floors),
        "",
        "## Margins (plain pruning minus the method; positive = the method leaks less)",
        "",
    ]
    lines += _compare_methods(plan, records, out, stem, metric_name, result["comparisons"])
    lines += _against_references(records, refs)
    lines += [""] + [
        f"![{m} {metric}]({stem}_{m}_{metric}.svg)"
        for m in plan.methods
        if m != BASELINE
        for metric in ("psnr", "ssim")
    ]
    lines += ["", *_provenance_lines(result)]
    write_json(out / f"{stem}.json", result)
    write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    from patrol_compress.report import build_report

    build_report(
        [work / "points"], work / "report.html", title=f"Frontier: {plan.name}", force=True
    )
    progress.say(f"wrote {out / stem}.json, .md, the planes and {work / 'report.html'}")
    return result


def _floors(
    first: dict[str, Any], reports: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """The featureless guesses' scores (the first point's: every point saw the same images).

    Points attacked on different evaluation images are refused: neither the
    floors nor the margins would compare like with like.
    """
    floors: dict[str, dict[str, float]] = {
        k: {"psnr": float(first[k]["psnr"]), "ssim": float(first[k]["ssim"])}
        for k in ("mean_image", "label_only")
        if k in first
    }
    image_sets = {str(r["strongest"].get("image_set")) for r in reports.values()}
    if len(image_sets) != 1:
        raise FrontierError(
            "the points were attacked on different evaluation images; they cannot be compared"
        )
    return floors


def _record_rows(
    plan: FrontierPlan,
    records: list[Record],
    reports: dict[str, dict[str, Any]],
    work: Path,
) -> list[dict[str, Any]]:
    """Each point's row of the frontier's JSON: its record with mean and per-image scores,
    its strongest attack, edge and provenance, so every number can be traced to a run."""
    return [
        {
            **{k: v for k, v in r.__dict__.items() if k not in ("psnr", "ssim")},
            "psnr": float(np.mean(r.psnr)),
            "ssim": float(np.mean(r.ssim)),
            "psnr_per_image": [round(v, 3) for v in r.psnr],
            "ssim_per_image": [round(v, 4) for v in r.ssim],
            "strongest": reports[p.name]["strongest"],
            "edge": reports[p.name].get("edge"),
            "provenance": _provenance_of(work, p.name),
        }
        for r, p in zip(records, plan.points, strict=True)
    ]


def _compare_methods(
    plan: FrontierPlan,
    records: list[Record],
    out: Path,
    stem: str,
    metric_name: str,
    comparisons: dict[str, Any],
) -> list[str]:
    """Every method against plain pruning in PSNR and SSIM: fills ``comparisons``, writes
    each plane's SVG and returns the margins' markdown lines."""
    lines: list[str] = []
    for m in plan.methods:
        if m == BASELINE:
            continue
        for metric in ("psnr", "ssim"):
            c = compare(records, metric, BASELINE, m, plan.bootstrap)
            comparisons[f"{m}/{metric}"] = c
            write_text(out / f"{stem}_{m}_{metric}.svg", svg(c, metric, metric_name))
            lines.append(comparison_line(c, GOAL[metric]))
    return lines


def _provenance_of(work: Path, name: str) -> dict[str, Any] | None:
    path = work / "points" / name / PROVENANCE_FILE
    return dict(read_json(path)) if path.is_file() else None


def _against_references(records: list[Record], refs: dict[str, Any]) -> list[str]:
    """Each method's change against each reference split, on the same evaluation images."""
    if not refs:
        return []
    out = ["", "## Against the undefended references (same targets, same images)", ""]
    groups: dict[tuple[str, float], list[Record]] = {}
    for r in records:
        groups.setdefault((r.method, r.value), []).append(r)
    for label, ref in refs.items():
        p0, s0, a0 = (float(np.mean(ref[k])) for k in ("psnr", "ssim", "accuracy"))
        for (m, v), rs in groups.items():
            p = float(np.mean([np.mean(r.psnr) for r in rs]))
            s = float(np.mean([np.mean(r.ssim) for r in rs]))
            a = float(np.mean([r.accuracy for r in rs]))
            out.append(
                f"- {m} {v:g} vs {label}: PSNR {p - p0:+.2f} dB ({100 * (p / p0 - 1):+.1f}%), "
                f"SSIM {s - s0:+.3f} ({100 * (s / s0 - 1):+.1f}%), accuracy "
                f"{100 * (a - a0):+.1f} points"
            )
    return out


def _provenance_lines(result: dict[str, Any]) -> list[str]:
    seen = {
        (
            (r["provenance"] or {}).get("device", {}).get("cpu"),
            (r["provenance"] or {}).get("device", {}).get("gpu"),
            (r["provenance"] or {}).get("commit"),
            (r["provenance"] or {}).get("dirty"),
            tuple((r["provenance"] or {}).get("dirty_paths") or ()),
        )
        for r in result["records"]
    }
    out = ["## Provenance", ""]
    for cpu, gpu, commit, dirty, paths in sorted(seen, key=str):
        changes = ""
        if dirty:
            changes = f" (with uncommitted changes{' to ' + ', '.join(paths) if paths else ''})"
        out.append(
            f"- points made on {cpu}{'' if not gpu else f' with {gpu}'} at commit "
            f"{(commit or 'unknown')[:10]}{changes}"
        )
    out.append(
        "- per point: device, versions, commit, command, recipe and weight sha256 in the JSON"
    )
    return out
