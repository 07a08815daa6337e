"""Measured edge latency for latency budgets: export a candidate, time it with bench.

A latency budget (``patrol.budget.latency_ms``, or ``fit: [latency]``) is checked
by running each candidate edge the way a user would measure the deployed one:
exported by :func:`~patrol_compress.exporters.export_partitions` (ONNX, fp32,
parity-checked) into a temporary folder and timed by
:func:`~patrol_compress.bench.bench` (the ``patrol-compress bench`` runner: its
time budgets, bound inputs, one request at a time) with the recipe's runtime,
threads and batch. ``seconds`` is the timed budget, a quarter of it the
warm-up; the result is bench's p50. The folder is always removed.

Why measured: at these sizes (sub-millisecond edges, tens of layers) per-layer
overhead and kernel choice decide latency as much as MACs do, and a split-4
edge has twice the layers of a split-2 one.

The structures that plan removals take the timer as a parameter
(:data:`EdgeTimer`, default :func:`measure_model_ms`), so the search above a
latency limit can be run on latencies that are a known function of the
candidate, where a real measurement would make the chosen plan vary with noise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from patrol_compress.errors import BudgetError
from patrol_compress.models.blocknet import BlockNet

RUNTIMES = ("onnxruntime", "openvino")
WARMUP_FRACTION = 0.25


@dataclass(frozen=True)
class LatencyLimit:
    """A latency bound for the edge, measured on this machine while planning.

    ``runtime`` (onnxruntime or openvino), ``threads`` and ``batch`` say how the
    candidate edge is run; ``ms`` bounds the median latency of one call;
    ``seconds`` is how long each candidate is timed.

    It lives beside the timer that reads it, and :mod:`.budget` imports both:
    the budget needs the timer, the timer never needs the budget, so the two
    modules import one way only (no function-level import closing a circle).
    """

    ms: float
    runtime: str = "onnxruntime"
    threads: int = 1
    batch: int = 1
    seconds: float = 0.5

    def describe(self) -> str:
        return f"{self.ms:.3f} ms ({self.runtime}, {self.threads} thread(s), batch {self.batch})"


EdgeTimer = Callable[[BlockNet, int, tuple[int, ...], LatencyLimit], float]
"""(model, split, one input's shape, limit) -> the edge's median latency in ms at
the limit's runtime, threads and batch; :func:`measure_model_ms` is the real one."""


def measure_model_ms(
    model: BlockNet, split: int, input_shape: tuple[int, ...], limit: LatencyLimit
) -> float:
    """bench's p50 (ms) of ``model``'s edge at ``split``, at ``limit``'s settings."""
    from patrol_compress.bench import bench
    from patrol_compress.exporters import export_partitions

    if limit.runtime not in RUNTIMES:
        raise BudgetError(
            f"patrol.budget.latency.runtime: expected one of {list(RUNTIMES)}, "
            f"found '{limit.runtime}'"
        )
    modes = {m: m.training for m in model.modules()}
    try:
        with tempfile.TemporaryDirectory(prefix="patrol-latency-") as tmp:
            out = Path(tmp) / "edge"
            with torch.no_grad():
                export_partitions(model.eval(), split, out, "onnx", "fp32", input_shape)
            report = bench(
                out,
                limit.runtime,
                [limit.batch],
                limit.threads,
                seconds=limit.seconds,
                warmup_seconds=limit.seconds * WARMUP_FRACTION,
            )
            return float(report["results"][0]["p50_ms"])
    finally:
        for m, was in modes.items():
            m.training = was
