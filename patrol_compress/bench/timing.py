"""How bench spends its time: call or time budgets, the sequential and the parallel loop.

Why time budgets: at sub-millisecond latency a fixed count of calls (the old
50) is a fraction of a second, so one burst of another process's work moves
p90 and even p50. A time budget, like OpenVINO's ``benchmark_app -t``, gives
thousands of samples for a fast edge and a few for a slow one, in a wall time
the user chose. Call budgets stay for ``--runs``/``--warmup``.

Why the loops look like this: everything the timer sees is the runtime's call
with inputs bound once (no per-call numpy copy, no output allocation where the
runtime allows; see :mod:`~patrol_compress.bench.runtimes`); the deadline is
checked with the timestamp the measurement already took, and the garbage
collector is paused so a collection of unrelated objects never lands inside a
timed call. Nothing here imports a runtime.
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("latency", "throughput")
"""``latency``: one request at a time; ``throughput``: several requests in parallel."""

DEFAULT_SECONDS = 2.0
"""Timed seconds per batch size when neither ``seconds`` nor ``runs`` is given."""

DEFAULT_WARMUP_SECONDS = 0.5
"""Untimed seconds per batch size when neither ``warmup_seconds`` nor ``warmup`` is given."""


@dataclass(frozen=True)
class Budget:
    """Stop after ``calls`` calls or after ``seconds`` seconds (exactly one is set).

    A time budget always allows at least one call, so a model slower than the
    budget still gets measured (and warmed up) once instead of reporting nothing.
    """

    calls: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.calls is None) == (self.seconds is None):
            raise ValueError("a Budget takes exactly one of calls or seconds")

    @property
    def empty(self) -> bool:
        """No call at all (``--warmup 0`` or ``--warmup-seconds 0``)."""
        return self.calls == 0 or self.seconds == 0

    def deadline_ns(self, start_ns: int) -> int | None:
        if self.seconds is None:
            return None
        return start_ns + math.ceil(self.seconds * 1e9)


@dataclass
class Timing:
    """What one measured block produced: per-call milliseconds, calls and wall time.

    ``times_ms`` is the reported latency per call: the runtime's own timer where
    it has one (OpenVINO's ``request.latency``, what ``benchmark_app`` reports),
    else the wall clock around the call. ``wall_ms`` is always the wall clock
    around the call as the Python caller saw it (None where only the runtime's
    timer exists: OpenVINO's asynchronous queue).
    """

    times_ms: np.ndarray
    calls: int
    duration_s: float
    streams: int = 1
    wall_ms: np.ndarray | None = None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the cyclic collector out of the timed calls."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sequential(
    call: Callable[[], Any], budget: Budget, probe: Callable[[], float] | None = None
) -> Timing:
    """One call after another until the budget is spent; each call timed on its own.

    ``probe``, read after each call outside the timed span, is the runtime's
    own milliseconds for that call; with it, those are the reported latency
    and the wall clock stays in ``wall_ms``.
    """
    if budget.empty:
        return Timing(np.empty(0), 0, 0.0, wall_ms=np.empty(0))
    times: list[int] = []
    own: list[float] = []
    with gc_paused():
        start = end = time.perf_counter_ns()
        deadline = budget.deadline_ns(start)
        while True:
            before = time.perf_counter_ns()
            call()
            end = time.perf_counter_ns()
            times.append(end - before)
            if probe is not None:
                own.append(probe())
            if deadline is not None:
                if end >= deadline:
                    break
            elif budget.calls is not None and len(times) >= budget.calls:
                break
    duration = (end - start) / 1e9
    wall = np.asarray(times, dtype=np.float64) / 1e6
    reported = np.asarray(own, dtype=np.float64) if probe is not None else wall
    return Timing(reported, len(times), duration, wall_ms=wall)


def parallel(calls: Sequence[Callable[[], Any]], budget: Budget) -> Timing:
    """One thread per call (stream), all started together, until the budget is spent.

    For runtimes whose ``run`` releases the GIL (onnxruntime), ``k`` threads
    each driving its own session keep ``k`` requests in flight, which is what
    a throughput deployment does. A call budget is shared (the streams together
    make ``calls`` calls); a time budget lets every stream finish the call it
    is in at the deadline. The wall time runs from the common start to the end
    of the last call, so images/s = calls x batch / wall time is not flattered
    by a stream that stopped early.
    """
    if budget.empty:
        return Timing(np.empty(0), 0, 0.0, len(calls))
    counter = itertools.count()  # next() on a count is atomic under the GIL
    per_stream: list[list[int]] = [[] for _ in calls]
    ends = [0] * len(calls)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(calls) + 1)
    start_box: list[int] = []

    def worker(index: int) -> None:
        call, times = calls[index], per_stream[index]
        gate.wait()
        deadline = budget.deadline_ns(start_box[0])
        try:
            while True:
                if budget.calls is not None and next(counter) >= budget.calls:
                    break
                before = time.perf_counter_ns()
                call()
                after = time.perf_counter_ns()
                times.append(after - before)
                ends[index] = after
                if deadline is not None and after >= deadline:
                    break
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(calls))]
    with gc_paused():
        for thread in threads:
            thread.start()
        start_box.append(time.perf_counter_ns())
        gate.wait()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    merged = [t for times in per_stream for t in times]
    duration = (max(ends) - start_box[0]) / 1e9 if merged else 0.0
    wall = np.asarray(merged, dtype=np.float64) / 1e6
    return Timing(wall, len(merged), duration, len(calls), wall_ms=wall)
