"""One entry point per job; the CLI commands are thin wrappers around these.

Heavy modules (torch, the data loaders, the exporters) are imported inside each
function so that ``import patrol_compress`` stays cheap and torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patrol_compress.recipe import Recipe, load_recipe


def _recipe(recipe: Recipe | str | Path) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def prune(
    recipe: Recipe | str | Path,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Target -> PATROL fine-tuning -> removal -> recovery -> evaluation; returns metrics."""
    from patrol_compress.pipeline import prune as run_prune

    return run_prune(_recipe(recipe), out, resume, force, quiet)


def train(
    recipe: Recipe | str | Path,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train (or load) and evaluate the target model only; returns its metrics."""
    from patrol_compress.pipeline import train_only

    return train_only(_recipe(recipe), out, resume, force, quiet)


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
