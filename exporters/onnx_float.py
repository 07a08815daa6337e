"""Float (fp32, fp16) ONNX export of the edge and cloud partitions, checked against torch.

The ``onnx`` target (:mod:`.onnx`) picks this module or :mod:`.onnx_int8` by
precision. The files' tools (the torch exporter, the checker, the ORT runner)
live here because the INT8 export starts from this module's fp32 files: both
the target and the INT8 export import this module, and it imports neither.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``).
Measured on the target machine (``docs/measurements.md``, "Splitting and
export") it exports a partition in ~0.1-0.3 s against ~3-7 s for the dynamo
exporter, writes exactly the requested opset (dynamo writes opset 20 and
down-converts through a fallback path with a warning), writes one self-contained
file, and folds BatchNorm into the convolutions. Both gave ORT parity <= 3e-6,
so nothing is lost in numbers, and exports run in every test. The TorchScript
exporter is deprecated; torch is pinned below 2.15 in pyproject, where it still
ships, and every export is checked by ``onnx.checker`` and by ORT parity, so a
torch that changes its behaviour fails loudly here rather than producing a wrong
artifact.

The partitions arrive as deep copies in eval mode (see ``docs/measurements.md``:
the exporter restores a container's mode and would flip shared BatchNorms to
training).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX, NOISE_INPUT
from patrol_compress.edge_noise import edge_feed
from patrol_compress.errors import ExportError, first_line

from .base import INPUT_NAME, OUTPUT_NAME, ExportJob
from .fp16 import convert_to_fp16
from .parity import check_parity

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


def torch_to_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    opset: int,
    dtype: torch.dtype = torch.float32,
    noise_shape: tuple[int, ...] | None = None,
) -> None:
    """Export ``module`` (eval mode) to one ONNX file with a dynamic batch dimension.

    ``dtype`` is the input's: uint8 for a cloud that receives quantized-uplink codes.
    ``noise_shape`` (a noisy uplink's edge) adds the second input, ``NOISE_INPUT``,
    of that per-image shape (:mod:`patrol_compress.uplink.noise`).
    """
    examples: tuple[torch.Tensor, ...] = (torch.zeros(2, *input_shape, dtype=dtype),)
    names = [INPUT_NAME]
    if noise_shape is not None:
        examples += (torch.zeros(2, *noise_shape),)
        names.append(NOISE_INPUT)
    axes = {name: {0: "batch"} for name in [*names, OUTPUT_NAME]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The deprecation notice of the TorchScript exporter is expected (see above).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                module,
                examples,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
    except Exception as exc:  # torch raises many types; the user needs one line
        first = first_line(exc)
        raise ExportError(f"torch.onnx.export failed for {path.name}: {first}") from exc


def check_onnx_file(path: Path) -> None:
    """Run the ONNX checker and refuse weights stored outside the file."""
    siblings = [p.name for p in path.parent.glob(f"{path.name}.data")]
    model = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external or siblings:
        raise ExportError(
            f"{path.name}: weights were written to external data ({(external or siblings)[:3]}); "
            "expected a single self-contained file"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = first_line(exc, "invalid model")
        raise ExportError(f"{path.name}: onnx.checker rejected the model: {first}") from None


def run_onnxruntime(
    path: Path, x: np.ndarray, threads: int | None = None, noise: np.ndarray | None = None
) -> np.ndarray:
    """Run an ONNX file on ORT's CPU provider; ``x`` is cast to the model's input type.
    ``noise`` feeds a noisy uplink's edge its second input (``NOISE_INPUT``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = _ORT_DTYPES.get(inp.type)
    if dtype is None:
        raise ExportError(f"{path.name}: unexpected input type {inp.type}")
    inputs = [(i.name, i.shape) for i in session.get_inputs()]
    return np.asarray(session.run(None, edge_inputs(path, inputs, x.astype(dtype), noise))[0])


def edge_inputs(
    path: Path, inputs: list[tuple[str, Any]], x: np.ndarray, noise: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The image, and for a noisy uplink's edge its ``noise``, which must be given: a check
    that drew its own would compare two draws (``patrol_compress.edge_noise``)."""
    try:
        names = [name for name, _ in inputs]
        if NOISE_INPUT in names and noise is None:
            raise ValueError(
                f"it takes a '{NOISE_INPUT}' input (a noisy uplink's edge): pass noise=, e.g. "
                "patrol_compress.edge_noise.draw_noise of the codes' shape"
            )
        if NOISE_INPUT not in names and noise is not None:
            raise ValueError(f"noise was given, but it takes no '{NOISE_INPUT}' input")
        return edge_feed(inputs, x, noise)
    except ValueError as exc:
        raise ExportError(f"{path.name}: {exc}") from None


def _to_fp16_file(path: Path, keep: list[str]) -> None:
    model = onnx.load(str(path))
    onnx.save(convert_to_fp16(model, keep_fp32=keep), str(path))


def export_onnx_float(job: ExportJob) -> list[str]:
    """Write fp32 or fp16 edge.onnx and cloud.onnx and check both with ORT."""
    edge_path = job.work_dir / EDGE_ONNX
    cloud_path = job.work_dir / CLOUD_ONNX
    noise = job.noise_sample
    noise_shape = None if noise is None else tuple(noise.shape[1:])
    torch_to_onnx(job.edge, job.input_shape, edge_path, job.opset, noise_shape=noise_shape)
    cloud_in = torch.uint8 if job.uplink is not None else torch.float32
    torch_to_onnx(job.cloud, tuple(job.edge_ref.shape[1:]), cloud_path, job.opset, cloud_in)
    if job.precision == "fp16":
        # A quantized uplink's uint8 codes stay uint8: only float tensors become fp16. A
        # noisy uplink's noise input stays fp32, as drawn: one array feeds either precision.
        _to_fp16_file(edge_path, keep=[INPUT_NAME] + ([NOISE_INPUT] if noise is not None else []))
        _to_fp16_file(cloud_path, keep=[OUTPUT_NAME])
    for path in (edge_path, cloud_path):
        check_onnx_file(path)
    edge_out = run_onnxruntime(edge_path, job.sample, noise=noise)
    check_parity(f"{EDGE_ONNX} (onnxruntime)", edge_out, job.edge_ref, job.precision)
    if edge_out.dtype != np.dtype(job.sent_dtype):
        raise ExportError(f"{EDGE_ONNX}: output type {edge_out.dtype}, expected {job.sent_dtype}")
    cloud_out = run_onnxruntime(cloud_path, job.edge_ref)
    check_parity(f"{CLOUD_ONNX} (onnxruntime)", cloud_out, job.cloud_ref, job.precision)
    return [EDGE_ONNX, CLOUD_ONNX]
