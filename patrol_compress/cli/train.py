"""``patrol-compress train RECIPE``: train and evaluate the target model only."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import user_errors
from patrol_compress.cli.prune import FORCE, OUT, QUIET, RESUME


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def train(
        recipe: Path = typer.Argument(..., help="Recipe YAML."),
        out: Path = OUT,
        resume: bool = RESUME,
        force: bool = FORCE,
        quiet: bool = QUIET,
    ) -> None:
        """Train (or load) the target model and write its accuracy to metrics.json."""
        from patrol_compress.api import train as run

        run(recipe, out, resume, force, quiet)
