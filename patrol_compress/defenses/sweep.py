"""``defend(run)``: evaluate the baseline defenses' strength sweeps on a run's target.

For every sweep of the recipe's ``defenses:`` section (or the ones asked for)
and every strength, a defended copy of the run's *unpruned target* is built at
the baselines' split, its accuracy measured and the attacks run on it, exactly
as ``patrol-compress attack`` scores a run. Each point gets its own folder
``OUT/<defense>-<strength>/`` with ``attack.json`` and ``attack_grid.png``; the
undefended target at the same split is the point ``OUT/none/``. ``OUT/
defenses.json`` lists every point. A point whose ``attack.json`` already
exists is kept (the sweep resumes point by point) unless ``force`` is set.

The baselines' split defaults to ``patrol.budget.fit_split``: the deepest
split whose unpruned edge fits the device, which is where a user without
PATROL would have to cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from patrol_compress.config.privacy import AttackConfig, DefenseSweep
from patrol_compress.config.recipe import Recipe
from patrol_compress.contracts import (
    ATTACK_FILE,
    DEFENSES_DIR,
    DEFENSES_FILE,
    META_FILE,
    TARGET_DIR,
)
from patrol_compress.errors import ArtifactError, RecipeError
from patrol_compress.io import read_json, write_json

if TYPE_CHECKING:  # torch is imported where a sweep runs, not for the CLI's --help
    import torch

    from patrol_compress.data.base import DataBundle
    from patrol_compress.models import BlockNet


def target_folder(run: Path) -> Path:
    """The unpruned target of ``run``: ``run/target`` for a prune run, else ``run`` itself."""
    if (run / TARGET_DIR / META_FILE).is_file():
        return run / TARGET_DIR
    if (run / META_FILE).is_file():
        return run
    raise ArtifactError(f"{run}: no target model here (expected target/model.json or model.json)")


def baseline_split(recipe: Recipe, split: int | None) -> int:
    if split is not None:
        return split
    if recipe.defenses.split is not None:
        return recipe.defenses.split
    budget = recipe.patrol.budget
    if budget is not None and budget.fit_split is not None:
        return budget.fit_split
    return recipe.patrol.split


def point_name(defense: str, strength: float) -> str:
    return f"{defense}-{strength:g}"


def select_sweeps(
    recipe: Recipe, names: Sequence[str] | None, strengths: Sequence[float] | None
) -> list[DefenseSweep]:
    """The recipe's sweeps, filtered by ``names``; ``strengths`` replaces every sweep's list."""
    sweeps = list(recipe.defenses.sweeps)
    if names:
        by_name: dict[str, DefenseSweep] = {s.name: s for s in sweeps}
        picked = []
        for n in names:
            base = by_name.get(n)
            try:
                picked.append(
                    base if base is not None else DefenseSweep.model_validate({"name": n})
                )
            except ValueError:
                raise RecipeError(
                    f"--defense: unknown defense '{n}'; choose from noise, dropout, skip, app"
                ) from None
        sweeps = picked
    if strengths:
        try:
            sweeps = [
                DefenseSweep.model_validate({**s.model_dump(), "strengths": list(strengths)})
                for s in sweeps
            ]
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise RecipeError(f"--strengths: {msg}") from None
    return sweeps


def _defended(
    model: BlockNet,
    k: int,
    sweep: DefenseSweep | None,
    strength: float | None,
    bundle: DataBundle,
    recipe: Recipe,
    dev: torch.device,
) -> tuple[BlockNet, dict[str, Any]]:
    """The model to attack for one point (the target itself when undefended) and its facts."""
    import torch

    from patrol_compress.defenses.base import DEFENSES, DefenseContext

    if sweep is None or strength is None:
        return model, {"label": f"no defense split {k}", "series": "none", "defense": None}
    d = DEFENSES.get(sweep.name)()
    torch.manual_seed(recipe.seed)
    defended = d.apply(model, k, strength, DefenseContext(bundle, recipe, sweep, dev, recipe.seed))
    return defended, {
        "label": f"{sweep.name} {d.parameter}={strength:g} split {k}",
        "series": sweep.name,
        "defense": {
            "name": sweep.name,
            "parameter": d.parameter,
            "strength": strength,
            "epochs": sweep.epochs,
        },
    }


Point = tuple[str, DefenseSweep | None, float | None]
"""One point of the sweeps: its folder name, the sweep (None: undefended) and strength."""


def _points_plan(sweeps: Sequence[DefenseSweep], include_undefended: bool) -> list[Point]:
    """Every point in the order it is run: the undefended target first, then each sweep's
    strengths as listed."""
    plan: list[Point] = []
    if include_undefended:
        plan.append(("none", None, None))
    for sw in sweeps:
        plan += [(point_name(sw.name, s), sw, s) for s in sw.strengths]
    return plan


def _attacked_line(folder: str, report: dict[str, Any]) -> str:
    """The progress line of a point just attacked: its accuracy and strongest attack."""
    s = report["strongest"]
    return (
        f"{folder}: {report['accuracy']['metric']} "
        f"{report['accuracy']['value'] * 100:.1f}%, strongest {s['attack']} "
        f"PSNR {s['psnr']:.2f} dB SSIM {s['ssim']:.3f}"
    )


def _point_row(folder: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A point's entry in ``defenses.json``: what the plane needs, read from its attack.json."""
    return {
        "folder": folder,
        "label": report["label"],
        "series": report["series"],
        "defense": report.get("defense"),
        "accuracy": report["accuracy"],
        "strongest": report["strongest"],
        "defense_seconds": seconds,
    }


def defend(
    run_dir: Path | str,
    defenses: Sequence[str] | None = None,
    strengths: Sequence[float] | None = None,
    split: int | None = None,
    attacks: Sequence[str] | None = None,
    out: Path | str | None = None,
    force: bool = False,
    include_undefended: bool = True,
    log: Callable[[str], object] | None = None,
    config: AttackConfig | None = None,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Run the sweeps (module docstring); returns what ``defenses.json`` holds.

    ``config`` replaces the recipe's ``attack:`` section (benchmarks size the
    attacker for the machine). ``trust_model_code`` allows importing the custom
    ``model.factory`` the run's ``model.json`` names
    (:func:`patrol_compress.models.saved.load_run_model`).
    """
    from patrol_compress.attacks.evaluate import attack_model, find_recipe
    from patrol_compress.data import build_data
    from patrol_compress.metrics.edge import edge_report
    from patrol_compress.models.saved import load_run_model
    from patrol_compress.models.split import check_split
    from patrol_compress.train.loop import device

    run = Path(run_dir)
    target = target_folder(run)
    recipe = find_recipe(target)
    sweeps = select_sweeps(recipe, defenses, strengths)
    k = baseline_split(recipe, split)
    names = list(attacks) if attacks else list(recipe.defenses.attacks)
    out_dir = Path(out) if out is not None else run / DEFENSES_DIR
    model, meta = load_run_model(target, trust_model_code=trust_model_code)
    check_split(model, k)
    bundle = build_data(recipe.data)
    input_shape = tuple(int(d) for d in meta["input_shape"])
    edge = edge_report(model, k, (input_shape[0], input_shape[1], input_shape[2]))
    edge.pop("per_block")
    budget = {"params": edge["params"], "fit_split": k}
    cfg = config if config is not None else recipe.attack
    dev = device()

    points: list[dict[str, Any]] = []
    for folder, sweep, strength in _points_plan(sweeps, include_undefended):
        dest = out_dir / folder
        if (dest / ATTACK_FILE).is_file() and not force:
            report = read_json(dest / ATTACK_FILE)
            seconds = report.get("defense_seconds", 0.0)
            if log:
                log(f"{folder}: kept (attack.json exists; --force recomputes)")
        else:
            start = time.perf_counter()
            defended, facts = _defended(model, k, sweep, strength, bundle, recipe, dev)
            seconds = time.perf_counter() - start
            facts.update(run=str(target), defense_seconds=round(seconds, 2))
            facts.update(budget=budget, edge=edge)
            report = attack_model(
                defended, meta, recipe, names, k, cfg, dest, facts=facts, data_bundle=bundle
            )
            if log:
                log(_attacked_line(folder, report))
        points.append(_point_row(folder, report, seconds))
    summary = {"run": str(run), "target": str(target), "split": k, "points": points}
    write_json(out_dir / DEFENSES_FILE, summary)
    return summary
