"""Edge sessions for each runtime: load the edge partition for one batch size, run it.

One session per batch size (``docs/measurements.md``: one runtime per timed
block) and, for OpenVINO, a model reshaped to that static batch, which is how a
deployed edge would run. ORT's intra-op thread pool spins between calls by
default, which burns the cores the measurement shares; spinning is switched off.
OpenVINO runs with ``INFERENCE_PRECISION_HINT="f32"`` by default because this
class of CPU otherwise silently computes in bf16 (``docs/measurements.md``,
"Splitting and export").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.contracts import EDGE_BIN, EDGE_ENGINE, EDGE_ONNX, EDGE_XML
from patrol_compress.errors import ArtifactError, PatrolError, import_optional


class BenchError(PatrolError):
    """A benchmark option or runtime cannot be used with this artifact."""


@dataclass
class EdgeSession:
    """A loaded edge partition for one batch size."""

    run: Callable[[np.ndarray], Any]
    input_dtype: np.dtype[Any]
    files: list[str]
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
    :func:`~patrol_compress.bench.manifest_check.staged_copy`) when there is one.
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
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = (lines[0] if lines else type(exc).__name__)[:200]
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


def _open_ort(
    ort: ModuleType, root: Path, shape: tuple[int, ...], threads: int | None, opts: dict[str, Any]
) -> EdgeSession:
    path = _need(root, EDGE_ONNX, "the onnxruntime benchmark runs edge.onnx", opts)
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
    dtype = np.dtype(np.float16 if inp.type == "tensor(float16)" else np.float32)
    name = inp.name

    def run(x: np.ndarray) -> Any:
        return session.run(None, {name: x})

    return EdgeSession(run, dtype, [EDGE_ONNX])


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
        model.reshape(list(shape))
    except Exception as exc:  # OpenVINO raises RuntimeError and its own types
        raise _runtime_refused(root, path.name, "OpenVINO", exc) from None
    config: dict[str, Any] = {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    hint = opts.get("ov_precision_hint", "f32")
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    dtype = np.dtype(compiled.input(0).get_element_type().to_dtype())

    def run(x: np.ndarray) -> Any:
        return request.infer({0: x})

    return EdgeSession(run, dtype, files)


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
    edge = TrtEdge(trt, path, shape)
    return EdgeSession(edge.run, edge.input_dtype, [EDGE_ENGINE], edge.close)


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
