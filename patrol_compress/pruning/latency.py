"""Measured edge latency for latency budgets: export a candidate edge, time it here.

A latency budget (``patrol.budget.latency_ms``) is checked by running each
candidate edge the way it will be deployed: exported to ONNX with the same
exporter as ``patrol-compress export`` (TorchScript, ``dynamo=False``) and
timed in onnxruntime or OpenVINO with the recipe's threads and batch. The timing
follows ``patrol-compress bench``'s rules (``docs/measurements.md``): one
session per measurement, ORT's spinning threads off, OpenVINO in f32 with one
stream and a reused infer request, warm-up by time, then calls until
``seconds`` have passed; the median call is the result. Candidates are timed
in a temporary folder that is always removed.

Why measured: at these sizes (sub-millisecond edges, tens of layers) per-layer
overhead and kernel choice decide latency as much as MACs do, and a split-4
edge has twice the layers of a split-2 one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patrol_compress.errors import BudgetError, import_optional
from patrol_compress.pruning.budget import LatencyLimit

WARMUP_FRACTION = 0.25
OPSET = 17


def _ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _ov_runner(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    ov = import_optional("openvino", "openvino", "latency budgets with runtime openvino")
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


RUNNERS: dict[str, Callable[[Path, int], Callable[[np.ndarray], Any]]] = {
    "onnxruntime": _ort_runner,
    "openvino": _ov_runner,
}


def time_calls(run: Callable[[np.ndarray], Any], x: np.ndarray, seconds: float) -> list[float]:
    """Per-call latencies (ms) over ``seconds`` after a warm-up of a quarter of that."""
    end = time.perf_counter() + seconds * WARMUP_FRACTION
    while time.perf_counter() < end:
        run(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_edge_ms(
    modules: Sequence[nn.Module], input_shape: tuple[int, ...], limit: LatencyLimit
) -> float:
    """Median latency (ms) of the edge ``modules`` (run in order) at ``limit``'s settings."""
    from patrol_compress.exporters.onnx import torch_to_onnx  # the exporter users get

    if limit.runtime not in RUNNERS:
        raise BudgetError(
            f"patrol.budget.latency.runtime: expected one of {sorted(RUNNERS)}, "
            f"found '{limit.runtime}'"
        )
    edge = nn.Sequential(*modules).eval()
    modes = {m: m.training for m in edge.modules()}
    try:
        with tempfile.TemporaryDirectory(prefix="patrol-latency-") as tmp:
            path = Path(tmp) / "edge.onnx"
            torch_to_onnx(edge, input_shape, path, OPSET)
            run = RUNNERS[limit.runtime](path, limit.threads)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((limit.batch, *input_shape)).astype(np.float32)
            return float(statistics.median(time_calls(run, x, limit.seconds)))
    finally:
        for m, was in modes.items():
            m.training = was


def measure_plan(
    build: Callable[[], Sequence[nn.Module]], input_shape: tuple[int, ...], limit: LatencyLimit
) -> float:
    """Latency of the edge ``build`` returns (a pruned copy; the original is untouched)."""
    with torch.no_grad():
        return measure_edge_ms(build(), input_shape, limit)
