"""Making one point: a target trained, a run pruned from it, an edge attacked; all resumable.

The frontier and the privacy benchmarks build their points through these
functions, which call the package's own front doors (:func:`patrol_compress.api.train`,
:func:`~patrol_compress.api.prune`, :func:`patrol_compress.attacks.attack`):
a benchmark never rebuilds a stage by hand. A finished step is detected by
the file it writes last (``metrics.json``, ``attack.json``) and kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from patrol_compress.config.privacy import AttackConfig
from patrol_compress.config.recipe import Recipe, dump_recipe
from patrol_compress.contracts import ATTACK_FILE, METRICS_FILE, MODEL_FILE, STAGES_FILE
from patrol_compress.io import read_json, write_json
from patrol_compress.provenance import provenance

Log = Callable[[str], None]
PROVENANCE_FILE = "provenance.json"


def _ensure_run(job: Callable[..., Any], recipe: Recipe, out: Path, log: Log, done: str) -> Path:
    """``job`` (``api.train`` or ``api.prune``) run into ``out`` unless it finished there
    (``metrics.json`` written); resumed when a stage ledger shows it was interrupted."""
    if (out / METRICS_FILE).is_file():
        return out
    start = time.perf_counter()
    job(recipe, out=out, resume=(out / STAGES_FILE).is_file(), quiet=True)
    log(f"{out}: {done} in {time.perf_counter() - start:.0f} s")
    return out


def ensure_target(recipe: Recipe, out: Path, log: Log) -> Path:
    """The trained (unpruned) target of ``recipe`` in ``out``; trained unless finished."""
    from patrol_compress.api import train

    return _ensure_run(train, recipe, out, log, "target trained")


def ensure_prune(recipe: Recipe, out: Path, log: Log) -> Path:
    """``recipe`` pruned into ``out`` (resumed when interrupted, kept when finished)."""
    from patrol_compress.api import prune

    return _ensure_run(prune, recipe, out, log, "pruned")


def attack_point(
    run: Path,
    split: int,
    cfg: AttackConfig,
    attacks: list[str],
    out: Path,
    log: Log,
    label: str | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """The attack of ``run`` at ``split`` into ``out`` (resumed from its finished parts).

    ``quiet=False`` prints the attack's own progress lines (part, epoch,
    validation score, estimate): a frontier point's attack runs for many
    minutes, and a shard log with one line per point left its reader guessing.
    """
    from patrol_compress.attacks import attack

    if (out / ATTACK_FILE).is_file():
        return dict(read_json(out / ATTACK_FILE))
    start = time.perf_counter()
    resume = (out / ".attack-parts").is_dir()
    report = attack(run, attacks, split, cfg, out, label, quiet=quiet, resume=resume)
    s = report["strongest"]
    log(
        f"{out.name}: acc {report['accuracy']['value'] * 100:.1f}%, strongest {s['attack']}/"
        f"{s.get('family')} {s['psnr']:.2f} dB / {s['ssim']:.3f}"
        f"{'' if s.get('converged', True) else ' ATTACK FAILED'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return report


def write_provenance(
    folder: Path, recipe: Recipe, command: str, weights: dict[str, Path], **extra: Any
) -> dict[str, Any]:
    """``provenance.json`` of a point (see :mod:`patrol_compress.provenance`); kept if present."""
    path = folder / PROVENANCE_FILE
    if path.is_file():
        return dict(read_json(path))
    record = provenance(command, dump_recipe(recipe), {k: v for k, v in weights.items()}, **extra)
    write_json(path, record)
    return record


def attack_summary(cfg: AttackConfig, attacks: list[str]) -> str:
    """How strong the attacker is, in the words a reader needs to judge the numbers."""
    b, w = cfg.blackbox, cfg.whitebox
    images = "all training-distribution images" if not b.max_images else f"{b.max_images:,} images"
    stop = (
        f"until validation PSNR stops improving by {b.min_delta_db} dB for {b.patience} epochs "
        f"(at most {b.epochs}), best validation epoch kept"
    )
    parts = [
        f"black-box: families {', '.join(b.families)} (base width {b.base_width}, min width "
        f"{b.min_width}, max width {b.max_width}), {images} minus a {b.val_fraction:.0%} "
        f"validation slice, each trained {stop}; the family chosen on validation"
    ]
    if "whitebox" in attacks:
        parts.append(
            f"white-box rMLE up to {w.steps} steps from {', '.join(w.inits)} (decoder prior "
            f"weights {', '.join(f'{x:g}' for x in w.prior_weights)}), start and steps chosen "
            f"on {w.val_images} validation images"
        )
    if "adaptive" in attacks:
        parts.append("adaptive: the black-box attacker on the exported edge's outputs")
    return "; ".join(parts) + (
        f"; every attack on the same {cfg.max_eval_images} evaluation images (or all there "
        "are), the strongest chosen on validation"
    )


def add_attack_options(parser: Any) -> None:
    """The attack options the privacy benchmarks share (an ``argparse`` parser).

    Defaults are the library's attacker; anything lighter must be asked for and
    is recorded in each point's ``attack.json``.
    """
    parser.add_argument("--attack-epochs", type=int, default=None, help="max epochs per family")
    parser.add_argument("--attack-images", type=int, default=None, help="attacker image cap")
    parser.add_argument("--base-width", type=int, default=None, help="decoder base width")
    parser.add_argument("--min-width", type=int, default=None, help="decoder minimum width")
    parser.add_argument("--patience", type=int, default=None, help="epochs without improvement")
    parser.add_argument("--whitebox-steps", type=int, default=None)
    parser.add_argument("--eval-images", type=int, default=None)


def attack_settings(base: AttackConfig, args: Any) -> AttackConfig:
    """``base`` with the options of :func:`add_attack_options` that were given."""
    data = base.model_dump()
    if getattr(args, "eval_images", None) is not None:
        data["max_eval_images"] = args.eval_images
    for option, key in (
        ("attack_epochs", "epochs"),
        ("attack_images", "max_images"),
        ("base_width", "base_width"),
        ("min_width", "min_width"),
        ("patience", "patience"),
    ):
        if getattr(args, option, None) is not None:
            data["blackbox"][key] = getattr(args, option)
    if getattr(args, "whitebox_steps", None) is not None:
        data["whitebox"]["steps"] = args.whitebox_steps
    return AttackConfig.model_validate(data)


def from_target(recipe: Recipe, name: str, target: Path, **patrol: Any) -> Recipe:
    """``recipe`` with other ``patrol:`` settings, starting from the same trained target."""
    from patrol_compress.frontier.methods import deep_merge

    data = recipe.model_dump(mode="json")
    data["name"] = f"{recipe.name}_{name}"
    data["train"]["checkpoint"] = str(target / MODEL_FILE)
    data["patrol"] = deep_merge(data["patrol"], patrol)
    return Recipe.model_validate(data)
