"""``patrol-compress prune RECIPE``: the whole PATROL job."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import user_errors

OUT = typer.Option(None, "--out", help="Output directory (overrides the recipe's output_dir).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run in the same directory.")
FORCE = typer.Option(False, "--force", help="Overwrite a previous run (only files we wrote).")
QUIET = typer.Option(False, "--quiet", help="No progress bars or tables.")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def prune(
        recipe: Path = typer.Argument(..., help="Recipe YAML."),
        out: Path = OUT,
        resume: bool = RESUME,
        force: bool = FORCE,
        quiet: bool = QUIET,
    ) -> None:
        """Train or load the target, PATROL-fine-tune, remove channels, recover, evaluate."""
        from patrol_compress.api import prune as run

        run(recipe, out, resume, force, quiet)
