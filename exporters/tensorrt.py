"""TensorRT engines (edge.engine, cloud.engine) built from the checked ONNX files.

Both TensorRT 10 and 11 are supported, and they differ in how FP16 is asked for:

* TensorRT 10 builds weakly typed networks; FP16 kernels are allowed with
  ``BuilderFlag.FP16``.
* TensorRT 11 removed ``BuilderFlag.FP16`` (and every other precision flag):
  networks are strongly typed and take their precision from the graph, so the
  FP16 artifact is built from the FP16 ONNX (``exporters/fp16.py``) with the
  ``STRONGLY_TYPED`` creation flag.

The version is told apart by the presence of ``BuilderFlag.FP16`` rather than by
parsing version strings. In both cases the engine is built from the same ONNX
file the artifact ships, so the split tensor has the same type everywhere.
For fp32 builds TF32 is switched off (where the flag still exists): TF32 keeps
10 mantissa bits and would fail the fp32 parity tolerance.

A timing cache (``trt.timing.cache``) is saved next to the engines and reused
by the next build into the same folder, which makes rebuilding after a
re-prune much faster. Engines are GPU-specific: the manifest records the
builder's GPU name.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX, TIMING_CACHE
from patrol_compress.errors import ExportError, import_optional

from .base import EXPORTERS, ExportJob, Target
from .onnx import export_onnx
from .parity import check_parity

WORKSPACE_BYTES = 1 << 30


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or MissingExtraError naming the extra to install."""
    return import_optional("tensorrt", "tensorrt", "TensorRT export")


def require_cuda() -> None:
    """Engines are built and checked on the GPU they will run on; refuse without one."""
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "TensorRT export needs a CUDA GPU (torch.cuda.is_available() is False); "
            "build engines on the machine that will run them"
        )


def _check_available() -> None:
    import_tensorrt()
    require_cuda()


def is_strongly_typed_only(trt: ModuleType) -> bool:
    """True for TensorRT 11+, where BuilderFlag.FP16 is gone and typing is always strong."""
    return not hasattr(trt.BuilderFlag, "FP16")


def build_engine(
    trt: ModuleType,
    onnx_path: Path,
    input_shape: tuple[int, ...],
    precision: str,
    opt_batch: int,
    max_batch: int,
    timing_cache: bytes,
) -> tuple[bytes, bytes]:
    """Build a serialized engine with a dynamic-batch profile; returns (engine, timing cache)."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TensorRT raises TypeError/RuntimeError without a usable GPU
        raise ExportError(
            f"TensorRT could not create a builder (a CUDA GPU is needed): {exc}"
        ) from None
    strong = is_strongly_typed_only(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors[:1]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16" and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)

    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *input_shape), (opt_batch, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name}")
    return bytes(serialized), bytes(cache.serialize())


def _torch_dtype(trt: ModuleType, dtype: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise ExportError(f"engine tensor type {dtype} is not float32/float16")
    return table[dtype]


def run_engine(trt: ModuleType, engine_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run a serialized single-input, single-output engine once on the GPU (via torch)."""
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ExportError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"expected one input and one output, engine has {inputs} / {outputs}")
    src, dst = inputs[0], outputs[0]
    x_dev = torch.from_numpy(np.ascontiguousarray(x)).to(
        device="cuda", dtype=_torch_dtype(trt, engine.get_tensor_dtype(src))
    )
    if context.set_input_shape(src, tuple(x.shape)) is False:
        raise ExportError(f"batch {x.shape[0]} is outside the engine's optimization profile")
    out_shape = tuple(int(d) for d in context.get_tensor_shape(dst))
    out_dev = torch.empty(
        out_shape, device="cuda", dtype=_torch_dtype(trt, engine.get_tensor_dtype(dst))
    )
    context.set_tensor_address(src, int(x_dev.data_ptr()))
    context.set_tensor_address(dst, int(out_dev.data_ptr()))
    if not context.execute_async_v3(stream_handle=torch.cuda.current_stream().cuda_stream):
        raise ExportError("TensorRT execution failed while checking parity")
    torch.cuda.synchronize()
    return np.asarray(out_dev.float().cpu().numpy())


def export_tensorrt(job: ExportJob) -> list[str]:
    """Write the ONNX pair, build an engine per partition, and check both on the GPU."""
    trt = import_tensorrt()
    require_cuda()
    if not 1 <= job.opt_batch <= job.max_batch:
        raise ExportError(f"need 1 <= opt_batch <= max_batch, got {job.opt_batch}, {job.max_batch}")
    files = export_onnx(job)
    previous = job.previous_dir / TIMING_CACHE if job.previous_dir is not None else None
    cache = previous.read_bytes() if previous is not None and previous.is_file() else b""
    job.notes["timing_cache_reused"] = bool(cache)
    for part, onnx_name, x, ref in (
        ("edge", EDGE_ONNX, job.sample, job.edge_ref),
        ("cloud", CLOUD_ONNX, job.edge_ref, job.cloud_ref),
    ):
        engine, cache = build_engine(
            trt,
            job.work_dir / onnx_name,
            tuple(x.shape[1:]),
            job.precision,
            job.opt_batch,
            job.max_batch,
            cache,
        )
        (job.work_dir / f"{part}.engine").write_bytes(engine)
        check_parity(f"{part}.engine (TensorRT)", run_engine(trt, engine, x), ref, job.precision)
        files.append(f"{part}.engine")
    (job.work_dir / TIMING_CACHE).write_bytes(cache)
    files.append(TIMING_CACHE)

    import torch

    job.notes["tensorrt"] = {
        "version": str(getattr(trt, "__version__", "unknown")),
        "strongly_typed": is_strongly_typed_only(trt),
        "gpu": torch.cuda.get_device_name(0),
        "batch_profile": {"min": 1, "opt": job.opt_batch, "max": job.max_batch},
    }
    return files


EXPORTERS.add(
    "trt",
    Target(
        export_tensorrt,
        "TensorRT engines (edge/cloud .engine) plus the ONNX they were built from",
        _check_available,
    ),
)
