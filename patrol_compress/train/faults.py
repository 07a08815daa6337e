"""Deterministic fault injection: make a training run die at an exact step.

Crash-safety tests must kill a run *in the middle of* a given epoch. Doing that
from outside (sleep, then SIGKILL) depends on the machine's speed: on a fast or
quiet machine the next checkpoint is already written, on a slow one the run has
not got there yet. Instead the test sets ::

    PATROL_FAULT=STAGE:EPOCH:STEP[:ACTION]

and the training loop (:func:`patrol_compress.train.loop.run_stage`) fails
right after step ``STEP`` (1-based) of epoch ``EPOCH`` (1-based) of the stage
named ``STAGE`` (``train``: target training; ``patrol``: PATROL fine-tuning;
``recover``: the recovery fine-tune after removal, with or without the
privacy terms): the weights have moved but the epoch's checkpoint is not
written, whatever the machine's speed. Any other stage name is refused: a
misspelt stage would never fire and the test would pass for nothing.
``ACTION`` is ``kill`` (default: the process sends itself SIGKILL, so nothing
after it runs, not even ``finally`` blocks or atexit), ``term`` (SIGTERM, as
``kill PID`` or a scheduler sends), ``int`` (a burst of Ctrl-C: one SIGINT now,
one while the first unwinds and one during interpreter exit, from atexit) or
``raise`` (a :class:`InjectedFault`, for in-process tests). Unset, nothing happens.

Jobs parse the variable in their preflight (:func:`fault_from_env`), before
``--force`` clears anything: a malformed value must cost nothing already written.
"""

from __future__ import annotations

import atexit
import os
import signal
from dataclasses import dataclass

from patrol_compress.errors import PatrolError

FAULT_ENV = "PATROL_FAULT"
ACTIONS = ("kill", "term", "int", "raise")
STAGES = ("train", "patrol", "recover")
"""The training stages' names as :func:`~patrol_compress.train.loop.run_stage` receives them."""


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` fault; deliberately not a PatrolError (it stands for a crash)."""


class FaultSpecError(PatrolError):
    """``PATROL_FAULT`` is set but malformed (a typo must not silently disable the fault)."""


@dataclass(frozen=True)
class Fault:
    """Where to fail: a stage name, a 1-based epoch and a 1-based step within it."""

    stage: str
    epoch: int
    step: int
    action: str = "kill"

    def check(self, stage: str, epoch: int, step: int) -> None:
        """Fail now if (stage, epoch, step) is the configured point."""
        if (stage, epoch, step) != (self.stage, self.epoch, self.step):
            return
        if self.action == "int":
            atexit.register(os.kill, os.getpid(), signal.SIGINT)  # the burst's last one
            try:
                os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # again, while the first unwinds
        if self.action in ("kill", "term"):
            os.kill(os.getpid(), signal.SIGKILL if self.action == "kill" else signal.SIGTERM)
            if self.action == "term":
                return  # the SIGTERM handler (if any) has run; without one the process is gone
        raise InjectedFault(f"{FAULT_ENV}: injected fault at {stage} epoch {epoch} step {step}")


def parse_fault(text: str) -> Fault:
    """``"patrol:3:1"`` or ``"patrol:3:1:raise"`` -> :class:`Fault`."""
    parts = text.split(":")
    usage = (
        f"{FAULT_ENV} must look like STAGE:EPOCH:STEP[:kill|term|int|raise], found {text[:60]!r}"
    )
    if len(parts) not in (3, 4) or not parts[0]:
        raise FaultSpecError(usage)
    try:
        epoch, step = int(parts[1]), int(parts[2])
    except ValueError:
        raise FaultSpecError(usage) from None
    action = parts[3] if len(parts) == 4 else "kill"
    if epoch < 1 or step < 1 or action not in ACTIONS:
        raise FaultSpecError(usage)
    if parts[0] not in STAGES:
        raise FaultSpecError(
            f"{FAULT_ENV}: unknown stage {parts[0][:40]!r} in {text[:60]!r}; expected one of "
            f"{', '.join(STAGES)}"
        )
    return Fault(parts[0], epoch, step, action)


def fault_from_env() -> Fault | None:
    """The fault ``PATROL_FAULT`` asks for, or None when it is unset or empty."""
    text = os.environ.get(FAULT_ENV, "").strip()
    return parse_fault(text) if text else None
