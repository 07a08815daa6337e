"""``patrol-compress validate RECIPE...``: check recipes without running anything."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import EXIT_USAGE, console, err_console
from patrol_compress.config.recipe import load_recipe
from patrol_compress.errors import RecipeError


def _check_factory(path: Path, spec: str) -> None:
    """Import ``model.factory`` (torch is loaded only for such recipes); RecipeError if not."""
    from patrol_compress.errors import ModelError
    from patrol_compress.models.factory import import_factory

    try:
        import_factory(spec)
    except ModelError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        recipes: list[Path] = typer.Argument(..., help="Recipe YAML files to check."),
    ) -> None:
        """Validate recipes: one line per problem (field path, expected, found); exit 2 if any.

        A custom ``model.factory`` is imported (not called), so a module that is
        not on PYTHONPATH is found here rather than when a run starts.
        """
        bad = 0
        for path in recipes:
            try:
                recipe = load_recipe(path)
                if recipe.model.factory is not None:
                    _check_factory(path, recipe.model.factory)
            except RecipeError as exc:
                bad += 1
                for line in str(exc).splitlines():
                    err_console.print(line, markup=False, highlight=False)
            else:
                console.print(f"{path}: ok", markup=False, highlight=False)
        if bad:
            raise typer.Exit(EXIT_USAGE)
