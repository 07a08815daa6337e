"""``patrol-compress prune RECIPE``: the whole PATROL job.

Also home of :func:`recipe_command`, the shared shape of every command that
runs a recipe into a run directory (``prune``, ``train``). Both run data-parallel
when started by ``torchrun --nproc-per-node N -m patrol_compress ...`` (see
:mod:`patrol_compress.distributed`); only rank 0 prints progress and tables.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from patrol_compress.cli.common import (
    RESUMABLE,
    check_utf8_path,
    choice_option,
    threads_option,
    use_threads,
    with_user_errors,
)
from patrol_compress.errors import PatrolError

OUT = typer.Option(None, "--out", help="Output directory (overrides the recipe's output_dir).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run in the same directory.")
FORCE = typer.Option(False, "--force", help="Overwrite a previous run (only files we wrote).")
QUIET = typer.Option(False, "--quiet", help="No progress bars or tables.")
THREADS = threads_option()
KEEP = choice_option(
    "all",
    "--keep-checkpoints",
    ("all", "last", "none"),
    "Once the job succeeded: keep every training stage's latest checkpoint (all), only the "
    "last stage's (last) or none (a finished run needs none to resume, export or attack).",
)


def recipe_command(app: typer.Typer, name: str, doc: str) -> None:
    """Register ``name RECIPE [--out] [--resume] [--force] [--quiet]`` calling ``api.<name>``.

    Under torchrun the command joins the process group for its duration. A
    user error found by rank 0 reaches the other ranks too (see
    ``Dist.run_on_main``); they leave quietly with exit code 0, so that torchrun,
    which stops every worker as soon as one fails, lets rank 0 print the one
    error line and exit with its code (torchrun's own exit code is then 1).
    """

    @with_user_errors(RESUMABLE)
    def command(
        recipe: Path = typer.Argument(..., help="Recipe YAML."),
        out: Path = OUT,
        resume: bool = RESUME,
        force: bool = FORCE,
        quiet: bool = QUIET,
        threads: int | None = THREADS,
        keep_checkpoints: str = KEEP,
    ) -> None:
        use_threads(threads)
        check_utf8_path(out, "--out")
        from patrol_compress import distributed

        run = getattr(importlib.import_module("patrol_compress.api"), name)
        with distributed.session() as ctx:
            try:
                run(
                    recipe,
                    out,
                    resume,
                    force,
                    quiet or not ctx.main,
                    keep_checkpoints=keep_checkpoints,
                )
            except PatrolError as exc:
                if getattr(exc, "from_main_rank", False):
                    return  # rank 0 reports it
                raise

    command.__doc__ = doc
    app.command(name=name)(command)


def register(app: typer.Typer) -> None:
    recipe_command(
        app,
        "prune",
        "Train or load the target, PATROL-fine-tune, remove channels, recover, evaluate.",
    )
