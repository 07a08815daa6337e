"""``patrol-compress prune RECIPE``: the whole PATROL job.

Also home of :func:`recipe_command`, the shared shape of every command that
runs a recipe into a run directory (``prune``, ``train``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from patrol_compress.cli.common import user_errors

OUT = typer.Option(None, "--out", help="Output directory (overrides the recipe's output_dir).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run in the same directory.")
FORCE = typer.Option(False, "--force", help="Overwrite a previous run (only files we wrote).")
QUIET = typer.Option(False, "--quiet", help="No progress bars or tables.")
THREADS = typer.Option(
    None,
    "--threads",
    min=1,
    help="CPU threads for torch (default: all cores; use 1 when the cores are shared).",
)


def recipe_command(app: typer.Typer, name: str, doc: str) -> None:
    """Register ``name RECIPE [--out] [--resume] [--force] [--quiet]`` calling ``api.<name>``."""

    @user_errors
    def command(
        recipe: Path = typer.Argument(..., help="Recipe YAML."),
        out: Path = OUT,
        resume: bool = RESUME,
        force: bool = FORCE,
        quiet: bool = QUIET,
        threads: int | None = THREADS,
    ) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        run = getattr(importlib.import_module("patrol_compress.api"), name)
        run(recipe, out, resume, force, quiet)

    command.__doc__ = doc
    app.command(name=name)(command)


def register(app: typer.Typer) -> None:
    recipe_command(
        app,
        "prune",
        "Train or load the target, PATROL-fine-tune, remove channels, recover, evaluate.",
    )
