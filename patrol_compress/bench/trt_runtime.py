"""Run a TensorRT edge engine without torch: device buffers through cuda-python.

The exporter checks engines with torch's CUDA tensors, but the bench path must
not import torch, so here device memory, copies and the stream come from
NVIDIA's ``cuda-python`` bindings (``cuda.bindings.runtime``, or ``cuda.cudart``
in releases before 12.6), as in TensorRT's own Python samples. One call times
what an edge device does per batch: copy the images to the GPU, run, copy the
split tensor back, synchronize.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.errors import ArtifactError, MissingExtraError, PatrolError, import_optional


def import_tensorrt() -> ModuleType:
    return import_optional("tensorrt", "tensorrt", "TensorRT benchmarking")


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise MissingExtraError("cuda-python", "tensorrt", "TensorRT benchmarking") from None
    return cudart


def _call(cudart: Any, result: Any) -> Any:
    """Unpack cuda-python's ``(error, value...)`` tuples, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise PatrolError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


class TrtEdge:
    """A deserialized edge engine with device buffers for one static batch shape."""

    def __init__(self, trt: ModuleType, path: Path, shape: tuple[int, ...]) -> None:
        self._cudart = cudart = import_cudart()
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            path.read_bytes()
        )
        if engine is None:
            raise ArtifactError(
                f"{path}: TensorRT could not load this engine (other GPU or version?)"
            )
        self._engine = engine
        self._context = context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{path}: expected one input and one output, found {names}")
        types = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
        self._src, self._dst = inputs[0], outputs[0]
        self.input_dtype = np.dtype(types[engine.get_tensor_dtype(self._src)])
        if context.set_input_shape(self._src, tuple(shape)) is False:
            raise ArtifactError(
                f"{path}: batch {shape[0]} is outside the engine's optimization profile "
                "(manifest notes.tensorrt.batch_profile); re-export with a larger max batch"
            )
        out_shape = tuple(int(d) for d in context.get_tensor_shape(self._dst))
        self._out = np.empty(out_shape, dtype=types[engine.get_tensor_dtype(self._dst)])
        in_bytes = int(np.prod(shape)) * self.input_dtype.itemsize
        self._d_in = _call(cudart, cudart.cudaMalloc(in_bytes))
        self._d_out = _call(cudart, cudart.cudaMalloc(self._out.nbytes))
        self._stream = _call(cudart, cudart.cudaStreamCreate())
        context.set_tensor_address(self._src, int(self._d_in))
        context.set_tensor_address(self._dst, int(self._d_out))

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(x)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _call(
            cudart, cudart.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, h2d, self._stream)
        )
        if not self._context.execute_async_v3(stream_handle=self._stream):
            raise PatrolError("TensorRT execution failed")
        _call(
            cudart,
            cudart.cudaMemcpyAsync(
                self._out.ctypes.data, self._d_out, self._out.nbytes, d2h, self._stream
            ),
        )
        _call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return self._out

    def close(self) -> None:
        cudart = self._cudart
        cudart.cudaFree(self._d_in)
        cudart.cudaFree(self._d_out)
        cudart.cudaStreamDestroy(self._stream)
