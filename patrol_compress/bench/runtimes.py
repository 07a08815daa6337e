"""Edge sessions for each runtime: load the edge partition for one batch size, time it.

One session per batch size (``docs/measurements.md``: one runtime per timed
block) and, for OpenVINO, a model reshaped to that static batch, which is how a
deployed edge would run. ORT's intra-op thread pool spins between calls by
default, which burns the cores the measurement shares; spinning is switched off.
OpenVINO runs with ``INFERENCE_PRECISION_HINT="f32"`` by default because this
class of CPU otherwise silently computes in bf16 (``docs/measurements.md``,
"Splitting and export"); ``benchmark_app`` does not set it, which alone made
its median look about 2x faster than ours on the quickstart edge.

The input is bound once per session and every timed call reuses it, as
``benchmark_app`` does for a static shape and as an edge loop writing frames
into the runtime's own input buffer would. The old per-call path
(``request.infer({0: x})``: a numpy -> tensor copy in, a copy out) measured
~10% slower than the bound one on a quiet machine and a median 1.4-1.5x
slower on a loaded one (same process, interleaved, 0.3 ms edge at batch 1):
it measured numpy and the Python wrapper, not the edge. onnxruntime gets an
IOBinding with a preallocated output for the same reason. OpenVINO gets its
performance hint explicitly (LATENCY: one stream; THROUGHPUT: the streams and
requests it picks), so a changed plugin default cannot change what is
measured, and its latency is the runtime's own per-call timer
(``request.latency``, what ``benchmark_app`` reports); the wall clock around
the Python call (5-7% more at 0.3 ms) is reported beside it.

Throughput mode keeps several requests in flight. OpenVINO: an
``AsyncInferQueue`` with the compiled model's optimal number of requests
(``benchmark_app``'s THROUGHPUT hint, async API); latencies are the
runtime's own per-request timer, as ``benchmark_app`` reports them.
onnxruntime has no streams: ``k`` sessions with one intra-op thread each,
driven by ``k`` Python threads (``session.run`` releases the GIL), ``k`` =
``threads`` or the usable cores; each session holds its own copy of the
weights, so memory is ``k`` times the latency mode's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.bench.timing import Budget, Timing, gc_paused, parallel, sequential
from patrol_compress.contracts import EDGE_BIN, EDGE_ENGINE, EDGE_ONNX, EDGE_XML
from patrol_compress.edge_noise import edge_feed as shared_edge_feed
from patrol_compress.edge_noise import ov_inputs
from patrol_compress.errors import ArtifactError, PatrolError, first_line, import_optional


class BenchError(PatrolError):
    """A benchmark option or runtime cannot be used with this artifact."""


Measure = Callable[[Budget], Timing]
"""Run the bound input for a budget (warm-up or timed) and say how long each call took."""


@dataclass
class EdgeSession:
    """A loaded edge partition for one batch size and one mode.

    ``prepare(x)`` binds the input once and returns the measuring function
    that warm-up and the timed block share, so both run the exact same calls.
    ``settings`` is what the runtime was asked for and chose (hint, streams,
    threads), recorded in the report so a comparison with another tool can
    check it ran the same configuration.
    """

    prepare: Callable[[np.ndarray], Measure]
    input_dtype: np.dtype[Any]
    files: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class Runtime:
    """How to import a runtime (before the memory baseline) and open edge sessions."""

    load: Callable[[], ModuleType]
    open: Callable[[ModuleType, Path, tuple[int, ...], int | None, dict[str, Any]], EdgeSession]


def _need(root: Path, name: str, why: str, opts: dict[str, Any]) -> Path:
    """``root/name`` if it exists and the manifest lists it (so its sha256 was checked).

    ``opts["verified"]`` holds the names :func:`verify_manifest` checked; a file
    the manifest does not list (dropped from it, or added next to it) is never
    loaded. The path returned is the private copy in ``opts["stage"]`` (see
    :func:`~patrol_compress.bench.staging.staged_copy`) when there is one.
    """
    path = root / name
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {why}")
    if name not in opts.get("verified", ()):
        raise ArtifactError(
            f"{path}: not listed in manifest.json, so its sha256 was never checked; "
            "refusing to load it (re-export the artifact)"
        )
    stage = opts.get("stage")
    return Path(stage) / name if stage is not None else path


def _runtime_refused(root: Path, name: str, runtime: str, exc: Exception) -> ArtifactError:
    """A runtime's own error while loading (corrupt model, an unlisted external file) as one line.

    Runtimes load from a copy holding only the listed files, so a model that
    needs another file (ONNX external data the manifest does not list) fails here.
    """
    detail = first_line(exc)[:200]
    return ArtifactError(
        f"{root / name}: {runtime} cannot load it ({detail}); a corrupt model, or one that "
        "needs files manifest.json does not list (external data); re-export the artifact"
    )


def _load_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:  # a core dependency, but edge devices may install runtimes by hand
        raise BenchError(
            "benchmarking with onnxruntime needs the 'onnxruntime' package: pip install onnxruntime"
        ) from None
    return onnxruntime


def usable_cpus() -> int:
    """Cores this process may run on (its affinity), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ort_session(
    ort: ModuleType, root: Path, path: Path, threads: int | None
) -> tuple[Any, np.dtype[Any]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own (pybind) types for every load failure
        raise _runtime_refused(root, EDGE_ONNX, "onnxruntime", exc) from None
    inp = session.get_inputs()[0]
    return session, np.dtype(np.float16 if inp.type == "tensor(float16)" else np.float32)


def edge_feed(inputs: list[tuple[str, list[Any]]], x: np.ndarray) -> dict[str, np.ndarray]:
    """The edge's inputs for one timed batch (:func:`~patrol_compress.edge_noise.edge_feed`):
    a noisy uplink's edge gets one draw of its noise, bound once like the image. What is
    timed is the graph; the draw is the deployer's, measured apart in
    ``docs/measurements.md``."""
    try:
        return shared_edge_feed(inputs, x)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _ort_bound_call(ort: ModuleType, session: Any, x: np.ndarray) -> Callable[[], Any]:
    """``run_with_iobinding`` with the input and a preallocated output bound once.

    The output buffer is sized by one plain ``run`` (the first call of the
    session, before any warm-up is counted); later calls write into it.
    """
    inputs = session.get_inputs()
    feed = edge_feed([(i.name, list(i.shape)) for i in inputs], x)
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
    # The binding points into these arrays without owning them: keep them alive with the call.
    keep: list[Any] = list(feed.values())
    for out, value in zip(session.get_outputs(), session.run(None, feed), strict=True):
        keep.append(ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
        binding.bind_ortvalue_output(out.name, keep[-1])

    def call(_keep: list[Any] = keep) -> None:
        session.run_with_iobinding(binding)

    return call


def _open_ort(
    ort: ModuleType, root: Path, shape: tuple[int, ...], threads: int | None, opts: dict[str, Any]
) -> EdgeSession:
    path = _need(root, EDGE_ONNX, "the onnxruntime benchmark runs edge.onnx", opts)
    if opts.get("mode", "latency") == "latency":
        session, dtype = _ort_session(ort, root, path, threads)

        def prepare(x: np.ndarray) -> Measure:
            return partial(sequential, _ort_bound_call(ort, session, x))

        return EdgeSession(prepare, dtype, [EDGE_ONNX], {"streams": 1, "intra_op_threads": threads})
    streams = threads or usable_cpus()
    first, dtype = _ort_session(ort, root, path, 1)
    sessions = [first] + [_ort_session(ort, root, path, 1)[0] for _ in range(streams - 1)]

    def prepare_parallel(x: np.ndarray) -> Measure:
        calls = [_ort_bound_call(ort, one, x) for one in sessions]
        return partial(parallel, calls)

    settings = {"streams": streams, "intra_op_threads": 1, "parallelism": "sessions x threads"}
    return EdgeSession(prepare_parallel, dtype, [EDGE_ONNX], settings)


def _load_ov() -> ModuleType:
    return import_optional("openvino", "openvino", "benchmarking with OpenVINO")


def _open_ov(
    ov: ModuleType, root: Path, shape: tuple[int, ...], threads: int | None, opts: dict[str, Any]
) -> EdgeSession:
    if (root / EDGE_XML).is_file():
        files = [EDGE_XML, EDGE_BIN]
        path = _need(root, EDGE_XML, "OpenVINO reads edge.xml", opts)
        _need(root, EDGE_BIN, "OpenVINO reads edge.xml with its weights in edge.bin", opts)
    else:
        path, files = (
            _need(root, EDGE_ONNX, "OpenVINO reads edge.xml or converts edge.onnx", opts),
            [EDGE_ONNX],
        )
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        ports = ov_inputs(model.inputs)
        model.reshape(
            {i: [shape[0], *dims[1:]] if i else list(shape) for i, (_, dims) in enumerate(ports)}
        )
    except Exception as exc:  # OpenVINO raises RuntimeError and its own types
        raise _runtime_refused(root, path.name, "OpenVINO", exc) from None
    throughput = opts.get("mode", "latency") == "throughput"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    hint = opts.get("ov_precision_hint", "f32")
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core.compile_model(model, "CPU", config)
    dtype = np.dtype(compiled.input(0).get_element_type().to_dtype())
    settings: dict[str, Any] = {
        key.lower(): str(compiled.get_property(key))
        for key in ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")
    }
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
    settings["inference_precision"] = str(getattr(precision, "get_type_name", precision.__str__)())
    if not throughput:
        request = compiled.create_infer_request()
        settings["streams"] = 1

        def prepare(x: np.ndarray) -> Measure:
            for i, value in enumerate(edge_feed(ports, x).values()):
                # Only the image is shared: the caller keeps it alive; the noise is copied
                # (shared, it would be freed with the feed while the request still reads it).
                request.set_input_tensor(i, ov.Tensor(value, shared_memory=i == 0))
            # The runtime's own per-call time is what benchmark_app reports; the
            # wall clock around infer() (5-7% more here: Python's share) stays in wall_ms.
            call = partial(request.infer, share_outputs=True)
            return partial(sequential, call, probe=lambda: float(request.latency))

        return EdgeSession(prepare, dtype, files, settings)
    queue = ov.AsyncInferQueue(
        compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    )
    settings["streams"] = len(queue)

    def prepare_async(x: np.ndarray) -> Measure:
        feed = list(edge_feed(ports, x).values())
        for i in range(len(queue)):
            for k, value in enumerate(feed):
                queue[i].set_input_tensor(k, ov.Tensor(value, shared_memory=k == 0))
        return partial(_ov_async, queue)

    return EdgeSession(prepare_async, dtype, files, settings)


def _ov_async(queue: Any, budget: Budget) -> Timing:
    """``benchmark_app``'s async loop: start a request whenever one is idle, until the budget.

    Per-call latency is each request's own ``latency`` (the runtime's timer),
    read when the request is reused and once more after ``wait_all``; the wall
    time covers everything started, so images/s counts only finished work.
    """
    if budget.empty:
        return Timing(np.empty(0), 0, 0.0, len(queue))
    times: list[float] = []
    in_flight: set[int] = set()
    started = 0
    with gc_paused():
        start = time.perf_counter_ns()
        deadline = budget.deadline_ns(start)
        while True:
            if budget.calls is not None and started >= budget.calls:
                break
            if deadline is not None and started and time.perf_counter_ns() >= deadline:
                break
            idle = queue.get_idle_request_id()
            if idle in in_flight:
                times.append(float(queue[idle].latency))
            in_flight.add(idle)
            queue.start_async()
            started += 1
        queue.wait_all()
        end = time.perf_counter_ns()
    times.extend(float(queue[i].latency) for i in in_flight)
    return Timing(np.asarray(times), started, (end - start) / 1e9, len(queue))


def _load_trt() -> ModuleType:
    from patrol_compress.bench.trt_runtime import import_tensorrt

    return import_tensorrt()


def _open_trt(
    trt: ModuleType, root: Path, shape: tuple[int, ...], threads: int | None, opts: dict[str, Any]
) -> EdgeSession:
    from patrol_compress.bench.trt_runtime import TrtEdge

    path = _need(
        root, EDGE_ENGINE, "the TensorRT benchmark runs edge.engine (export --target trt)", opts
    )
    if opts.get("mode", "latency") != "latency":
        raise BenchError("--mode throughput is not available for TensorRT; use --mode latency")
    edge = TrtEdge(trt, path, shape)

    def prepare(x: np.ndarray) -> Measure:
        # Each call copies the input to the GPU and the output back, as trtexec's latency does.
        return partial(sequential, partial(edge.run, x))

    return EdgeSession(prepare, edge.input_dtype, [EDGE_ENGINE], {"streams": 1}, edge.close)


TORCH_REFUSAL = (
    "the torch runtime is not supported for exported artifacts: they hold ONNX/IR/engines, "
    "not torch modules, and the bench path must run without torch; use "
    "--runtime onnxruntime (or openvino) to time the same graph"
)

RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime(_load_ort, _open_ort),
    "openvino": Runtime(_load_ov, _open_ov),
    "trt": Runtime(_load_trt, _open_trt),
}
RUNTIME_NAMES = tuple(RUNTIMES)


def runtime_version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "unknown"))
