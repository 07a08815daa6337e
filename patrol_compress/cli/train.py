"""``patrol-compress train RECIPE``: train and evaluate the target model only."""

from __future__ import annotations

import typer

from patrol_compress.cli.prune import recipe_command


def register(app: typer.Typer) -> None:
    recipe_command(app, "train", "Train (or load) the target model; accuracy into metrics.json.")
