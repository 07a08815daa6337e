"""``patrol-compress validate RECIPE...``: check recipes without running anything."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import EXIT_USAGE, console, err_console
from patrol_compress.errors import RecipeError
from patrol_compress.recipe import load_recipe


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        recipes: list[Path] = typer.Argument(..., help="Recipe YAML files to check."),
    ) -> None:
        """Validate recipes: one line per problem (field path, expected, found); exit 2 if any."""
        bad = 0
        for path in recipes:
            try:
                load_recipe(path)
            except RecipeError as exc:
                bad += 1
                for line in str(exc).splitlines():
                    err_console.print(line, markup=False, highlight=False)
            else:
                console.print(f"{path}: ok", markup=False, highlight=False)
        if bad:
            raise typer.Exit(EXIT_USAGE)
