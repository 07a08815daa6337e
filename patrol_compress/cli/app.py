"""The ``patrol-compress`` Typer application.

Each command lives in its own module with a ``register(app)`` function; command
modules import torch and the backends inside their bodies, so ``bench`` runs on
a device with only numpy and a runtime installed.
"""

from __future__ import annotations

import os

import typer

from patrol_compress.cli import (
    attack,
    bench,
    defend,
    export,
    frontier,
    prune,
    report,
    train,
    validate,
)
from patrol_compress.cli.common import PlainFlagsCommand, PlainFlagsGroup, install_sigterm_handler

app = typer.Typer(
    name="patrol-compress",
    cls=PlainFlagsGroup,
    help="Privacy-oriented structured pruning (PATROL) and edge/cloud export for split inference.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("patrol-compress")
        except PackageNotFoundError:  # running from a source tree that was never installed
            found = "unknown (not installed)"
        typer.echo(f"patrol-compress {found}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    if debug:
        os.environ["PATROL_DEBUG"] = "1"
    install_sigterm_handler()


for _module in (train, prune, export, bench, attack, defend, frontier, report, validate):
    _module.register(app)
for _info in app.registered_commands:
    _info.cls = PlainFlagsCommand  # flags shown as --force, not --force <bool>


def main() -> None:
    app()
