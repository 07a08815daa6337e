"""Shared CLI plumbing: the one-line error contract and the console.

A :class:`~patrol_compress.errors.PatrolError` becomes one line on stderr and
exit code 2; ``--debug`` (or ``PATROL_DEBUG=1``) re-raises it with its traceback.
Tracebacks never show local variables (they could hold tensors or images).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click
from typer.core import TyperCommand, TyperGroup

from patrol_compress.errors import PatrolError, UsageError, first_line, storage_error
from patrol_compress.machine import check_thread_count

P = ParamSpec("P")
R = TypeVar("R")

# soft_wrap: an error stays one line however narrow the terminal (scripts grep it).
console = Console(stderr=False, soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2


def _plain_flags(params: list[_click.Parameter]) -> list[_click.Parameter]:
    """On/off flags take no value: blank their metavar so --help does not show ``<bool>``."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class PlainFlagsCommand(TyperCommand):
    """A command whose --help lists flags (``--force``, ``--help``) without a value type."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _plain_flags(super().get_params(ctx))


class PlainFlagsGroup(TyperGroup):
    """The application group, with :class:`PlainFlagsCommand`'s help for its own flags."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _plain_flags(super().get_params(ctx))


def choice_option(default: Any, name: str, choices: Sequence[str], help: str) -> Any:
    """A ``typer.Option`` whose value must be one of ``choices``.

    Checked by the CLI while parsing, before the command runs: anything else is
    one line naming the valid values and exit 2. --help shows them as
    ``a|b|c``.
    """

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise fail(f"{name} {value!r}: expected one of {', '.join(choices)}")
        return value

    return typer.Option(default, name, help=help, metavar=f"<{'|'.join(choices)}>", callback=check)


def check_threads(threads: int | None) -> None:
    """``--threads`` between 1 and the usable cores (:mod:`patrol_compress.machine`)."""
    check_thread_count(threads, "--threads")


def check_utf8_path(path: Path | None, option: str) -> None:
    """An output path must have a UTF-8 name (Linux passes any bytes as ``\\udcXX`` escapes).

    safetensors, the YAML/JSON we write and the ledger need a UTF-8 name; without
    this check a whole job ran and failed on its last read.
    """
    if path is None:
        return
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise UsageError(
            f"{option} {shown}: the name is not valid UTF-8; choose a UTF-8 path"
        ) from None


def threads_option() -> Any:
    """``--threads`` of the commands that compute with torch (train, prune, export, ...)."""
    return typer.Option(
        None,
        "--threads",
        help="CPU threads for torch, 1..usable cores (default: all; use 1 when the cores are "
        "shared).",
    )


def use_threads(threads: int | None) -> None:
    """Check ``--threads`` (:func:`check_threads`) and give torch that many intra-op threads."""
    check_threads(threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler, torchrun stopping workers), raised in the main thread.

    A KeyboardInterrupt so that it unwinds like Ctrl-C (``finally`` blocks run,
    the run folder's lock is released) and the CLI says what happened instead
    of exiting silently.
    """


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def install_sigterm_handler() -> None:
    """Turn SIGTERM into :class:`Terminated` (main thread only; elsewhere Python forbids it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def debug_enabled() -> bool:
    return os.environ.get("PATROL_DEBUG", "") not in ("", "0")


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (first line only) and return the exit to raise."""
    first = first_line(message, "unknown error")
    more = message.count("\n")
    suffix = f" (+{more} more)" if more else ""
    # The message is text, not markup: "[tensorrt]" in a pip command must survive.
    err_console.print(f"[bold red]error:[/] {escape(first)}{suffix}", markup=True, highlight=False)
    return typer.Exit(EXIT_USAGE)


# torch re-raises an error from a DataLoader worker with the worker's whole traceback
# as its message; the user's message is on the traceback's last "<Type>: ..." line.
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.$")


def user_message(exc: PatrolError) -> str:
    """The message of ``exc``, unwrapped from torch's DataLoader-worker re-raise."""
    text = str(exc)
    lines = text.splitlines()
    if not lines or not _WORKER_ERROR.match(lines[0]):
        return text
    name = type(exc).__name__
    for i in range(len(lines) - 1, 0, -1):
        head, sep, rest = lines[i].partition(": ")
        if sep and head.rsplit(".", 1)[-1] == name:
            return "\n".join([rest, *lines[i + 1 :]])
    return text


RESUMABLE = "finished stages are kept, rerun with --resume"
"""What an interrupted ``prune``/``train`` leaves: checkpoints and finished stages."""
ATTACK_RESUMABLE = (
    "finished parts (decoder families, white-box starts) are kept, rerun with --resume"
)
"""What an interrupted ``attack`` leaves: its finished parts (see attacks/parts.py)."""
CONTINUES = "finished targets, runs and points are kept; rerun the same command to continue"
"""What an interrupted ``frontier`` leaves: everything it finished, picked up by a rerun."""
REPEATABLE = "nothing half-written was left (results appear only once complete); rerun it"
"""What an interrupted export, attack, bench or report leaves: no new file, the old ones whole."""


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn PatrolError into the one-line, exit-code-2 contract (a command with no --resume)."""
    return with_user_errors(REPEATABLE)(fn)


def with_user_errors(interrupted: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`user_errors` whose Ctrl-C / SIGTERM line says ``interrupted`` (what was kept and
    how to go on: ``prune``/``train`` and ``attack`` have ``--resume``, ``frontier`` resumes
    by itself)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except PatrolError as exc:
                if debug_enabled():
                    raise
                raise fail(user_message(exc)) from None
            except OSError as exc:  # permissions, a full disk: the machine's, not a bug
                error = storage_error(exc)
                if error is None or debug_enabled():
                    raise
                raise fail(str(error)) from None
            except KeyboardInterrupt as exc:
                # One line, also for a burst of Ctrl-C: further ones are ignored while exiting.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
                err_console.print(f"{what}; {interrupted}", markup=False, highlight=False)
                sys.exit(143 if isinstance(exc, Terminated) else 130)

        return wrapper

    return decorate
