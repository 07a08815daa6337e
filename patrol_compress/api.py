"""One entry point per job; the CLI commands are thin wrappers around these.

Heavy modules (torch, the data loaders, the exporters) are imported inside each
function so that ``import patrol_compress`` stays cheap and torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from patrol_compress.contracts import ATTACK_FILE, DEFENSES_DIR
from patrol_compress.recipe import Recipe, load_recipe


def _recipe(recipe: Recipe | str | Path) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def prune(
    recipe: Recipe | str | Path,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """Target -> PATROL fine-tuning -> removal -> recovery -> evaluation; returns metrics."""
    from patrol_compress.pipeline import prune as run_prune

    return run_prune(_recipe(recipe), out, resume, force, quiet, keep_checkpoints)


def train(
    recipe: Recipe | str | Path,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """Train (or load) and evaluate the target model only; returns its metrics."""
    from patrol_compress.pipeline import train_only

    return train_only(_recipe(recipe), out, resume, force, quiet, keep_checkpoints)


def export(
    run_dir: Path,
    split: int,
    target: str = "onnx",
    precision: str = "fp32",
    out: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export the run's model as edge/cloud partitions; returns the manifest."""
    from patrol_compress.exporters import export_run

    return export_run(run_dir, split, target, precision, out, force)


def bench(artifact_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """Benchmark an exported edge partition (torch-free path)."""
    from patrol_compress.bench import bench as run_bench

    return run_bench(artifact_dir, **kwargs)


def _locked(folder: Path) -> AbstractContextManager[object]:
    """The lock of the run ``folder`` belongs to, if that run folder exists yet.

    A job that writes into a run (attack, defend) must not run while a prune of
    it does; a folder that does not exist yet is new and has nothing to mix up
    (and creating it here would leave an empty folder behind a failed job).
    """
    from patrol_compress.locking import folder_lock, run_root

    root = run_root(folder)
    return folder_lock(root) if root.is_dir() else nullcontext()


def attack_output_free(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an earlier attack's results without ``force`` (checked before work)."""
    from patrol_compress.errors import OutputExistsError

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder; choose another --out")
    if (out_dir / ATTACK_FILE).exists() and not force:
        raise OutputExistsError(
            f"{out_dir / ATTACK_FILE}: an attack's results are already here; "
            "pass --force to replace them or --out to write elsewhere"
        )


def attack(
    run_dir: Path,
    attacks: Sequence[str] | None = None,
    split: int | None = None,
    config: Path | None = None,
    out: Path | None = None,
    label: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Model inversion attacks on the run's edge; writes attack.json and attack_grid.png.

    An existing ``attack.json`` in the output folder is refused unless ``force``,
    before the (minutes-long) attack starts, and the run folder is locked meanwhile.
    """
    from patrol_compress.attacks import DEFAULT_ATTACKS
    from patrol_compress.attacks import attack as run_attacks

    out_dir = Path(out) if out is not None else Path(run_dir)
    attack_output_free(out_dir, force)
    with _locked(out_dir):
        attack_output_free(out_dir, force)  # again, now that no other job can write it
        names = list(attacks) if attacks else list(DEFAULT_ATTACKS)
        return run_attacks(run_dir, names, split, config, out, label)


def defend(run_dir: Path, out: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """The baseline defenses' sweeps (see :func:`patrol_compress.defenses.defend`), run locked."""
    from patrol_compress.defenses import defend as run_defend

    out_dir = Path(out) if out is not None else Path(run_dir) / DEFENSES_DIR
    with _locked(out_dir):
        return run_defend(run_dir, out=out, **kwargs)
