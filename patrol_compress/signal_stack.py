"""Keep the calling thread's alternate signal stack across OpenVINO work.

OpenVINO's CPU plugin (one per ``ov.Core``) gives the thread that creates it a
fresh alternate signal stack (``sigaltstack``, for AMX-sized signal frames).
When the plugin is destroyed it unmaps that stack, but puts the previous one
back only if its own is still the current one. Two Cores released in the order
they were created, or a Core released on another thread, therefore leave the
thread's alternate stack pointing at unmapped memory. Every Python signal
handler is installed with ``SA_ONSTACK`` (SIGINT's default one, torch
DataLoader's SIGCHLD handler, the CLI's SIGTERM handler), so the next such
signal kills the process with SIGSEGV before any handler, faulthandler's
included, can run: the "subprocess spawn after an INT8 export" crash of issue
24 (evidence in docs/measurements.md, "OpenVINO and the signal stack").

:func:`keep_signal_stack` records the stack on entry and reinstates it on exit,
so whatever Cores the block creates, and whenever they are released, none of
their stacks stays installed: a later plugin destructor then only unmaps memory
nobody points at. Linux only (the plugin does this on Linux only).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from dataclasses import dataclass


class _StackT(ctypes.Structure):
    """``stack_t`` from <signal.h> (x86-64 and aarch64 Linux share the layout)."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@dataclass(frozen=True)
class SignalStack:
    """The calling thread's alternate signal stack: address, size and ``ss_flags``."""

    address: int
    size: int
    flags: int


def _sigaltstack(new: _StackT | None, old: _StackT | None) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return (
        libc.sigaltstack(
            ctypes.byref(new) if new is not None else None,
            ctypes.byref(old) if old is not None else None,
        )
        == 0
    )


def current_signal_stack() -> SignalStack | None:
    """The calling thread's alternate signal stack, or None off Linux or if it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    now = _StackT()
    if not _sigaltstack(None, now):
        return None
    return SignalStack(int(now.ss_sp or 0), int(now.ss_size), int(now.ss_flags))


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had."""
    if not sys.platform.startswith("linux"):
        yield
        return
    before = _StackT()
    saved = _sigaltstack(None, before)
    try:
        yield
    finally:
        if saved:
            _sigaltstack(before, None)
