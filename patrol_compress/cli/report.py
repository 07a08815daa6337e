"""``patrol-compress report``: not built yet (planned in the attacks/report issue)."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import user_errors
from patrol_compress.errors import NotBuiltError


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @user_errors
    def report(runs: list[Path] = typer.Argument(None, help="Run directories.")) -> None:
        """Not built yet: exits with code 2 and says so."""
        raise NotBuiltError("'report' is not built yet in this version of patrol-compress")
