"""Progress lines and time estimates for an attack a user can wait for.

An attack trains several decoders and optimises images for minutes to hours.
A progress bar that only draws on a terminal left a user whose output went to
a log file with nothing for half an hour, so every line here is printed
whatever the output is: the part running (``blackbox/upsample``), its epoch
and validation score, the time elapsed and the estimate of what is left.
Lines are rate-limited (:data:`MIN_INTERVAL_S`) so a fast tiny attack does
not flood a log, but the first and last line of every part always print.

The estimate is made before anything trains: every part is timed on a couple
of its own batches (:class:`PartEstimate`), and multiplied by the work the
part will do. A decoder stops when its validation score plateaus, so its
epoch count is a range: at least ``patience + 1`` epochs, at most ``epochs``;
the central guess is :data:`TYPICAL_EPOCHS_FACTOR` times the patience,
capped by the maximum (what the suite's decoders ran on the measured
settings, ``docs/measurements.md``). While a part runs, the estimate of what
is left is updated from its measured epoch time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_INTERVAL_S = 5.0
"""At most one epoch line per part in this many seconds (first and last always)."""
TYPICAL_EPOCHS_FACTOR = 5
"""Central guess of a plateau-stopped decoder's epochs: this many times its patience."""


@dataclass
class PartEstimate:
    """The expected cost of one part of an attack (a decoder family, a white-box start).

    ``unit_s`` is the measured cost of one unit (an epoch, an optimisation
    step); ``low``, ``typical`` and ``high`` are how many units the part may run.
    """

    name: str
    unit_s: float
    low: float
    typical: float
    high: float
    unit: str = "epoch"

    def seconds(self, which: str = "typical") -> float:
        return self.unit_s * float(getattr(self, which))


def fmt_seconds(seconds: float) -> str:
    """``1h02m``, ``12m05s``, ``40s`` or ``0.4s``: what a person reads at a glance."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


Printer = Callable[[str], None]


@dataclass
class AttackProgress:
    """Prints the attack's progress as plain lines; silent when ``printer`` is None."""

    printer: Printer | None
    plan: list[PartEstimate] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    done: set[str] = field(default_factory=set)
    _last: dict[str, float] = field(default_factory=dict)

    def say(self, text: str) -> None:
        if self.printer is not None:
            self.printer(f"[attack {fmt_seconds(self.elapsed())}] {text}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def announce(self, parts: list[PartEstimate], skipped: list[str]) -> None:
        """The plan and its estimate, before any part runs."""
        self.plan = list(parts)
        if skipped:
            self.say(f"resuming: {len(skipped)} finished part(s) kept ({', '.join(skipped)})")
        if not parts:
            return
        low = sum(p.seconds("low") for p in parts)
        typical = sum(p.seconds("typical") for p in parts)
        high = sum(p.seconds("high") for p in parts)
        self.say(
            f"estimate: about {fmt_seconds(typical)} (between {fmt_seconds(low)} and "
            f"{fmt_seconds(high)}) for {len(parts)} part(s): "
            + "; ".join(
                f"{p.name} {fmt_seconds(p.unit_s)}/{p.unit} x {p.low:g}-{p.high:g}" for p in parts
            )
        )

    def left(self, current: str | None = None, current_left_s: float | None = None) -> float:
        """Seconds the unfinished parts are expected to take (``current`` as measured)."""
        total = 0.0
        for p in self.plan:
            if p.name in self.done:
                continue
            if p.name == current and current_left_s is not None:
                total += current_left_s
            else:
                total += p.seconds()
        return total

    def step(
        self,
        part: str,
        index: int,
        total: int,
        text: str,
        unit_s: float,
        typical_left: float,
        final: bool = False,
    ) -> None:
        """One line for unit ``index`` of ``total`` of ``part`` (rate-limited)."""
        now = time.perf_counter()
        first = part not in self._last
        if not (first or final or now - self._last[part] >= MIN_INTERVAL_S):
            return
        self._last[part] = now
        left = self.left(part, unit_s * max(0.0, typical_left))
        self.say(f"{part} {index}/{total}: {text}; ~{fmt_seconds(left)} left")

    def finish(self, part: str, text: str) -> None:
        self.done.add(part)
        self.say(f"{part} done: {text}")
