"""INT8 ONNX: ONNX Runtime static quantization (QDQ) with a uint8 split tensor.

Both partitions are first exported and checked in FP32 exactly as an fp32
artifact is (into a private folder that is deleted afterwards), then quantized
with ``onnxruntime.quantization.quantize_static``:

* QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op),
  the form every runtime reads (ORT, OpenVINO, TensorRT), rather than ORT's
  QOperator ops;
* weights int8, symmetric, per output channel (a pruned CNN's channels differ in
  scale by orders of magnitude: one scale per tensor would crush the small ones),
  in a 7-bit range (``reduce_range``): on x86 CPUs without VNNI, ORT's uint8 x
  int8 kernels add pairs of products in int16 and saturate (measured in
  ``docs/measurements.md``, "INT8 on CPUs without VNNI"). A deployed edge may
  be such a CPU; NNCF's overflow fix does the same for OpenVINO;
* activations uint8 per tensor, MinMax ranges from the calibration images.

Then the graphs are cut at the split: the edge's final DequantizeLinear is
removed, so ``edge.onnx`` *outputs* uint8, and the cloud's first QuantizeLinear
is removed, so ``cloud.onnx`` *takes* uint8 and starts with DequantizeLinear. The
cloud is quantized with its input's scale and zero point forced to the edge's
(``TensorQuantOverrides``), so removing that quantizer is exact: the cloud
computes on precisely the values the edge sent. Its calibration inputs are what
the INT8 edge sends on the calibration images, dequantized.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX
from patrol_compress.errors import ExportError, first_line

from .base import INPUT_NAME, OUTPUT_NAME, ExportJob
from .int8 import (
    Int8Data,
    Pipeline,
    SplitQuant,
    calibration_batches,
    enforce_parity,
    fp32_edge_bytes,
    judge_parity,
    quiet_tools,
    require_data,
)
from .onnx_float import check_onnx_file, export_onnx_float


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if name in n.output), None)


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise ExportError(f"quantized graph: no initializer '{name}'")


def _quant_params(graph: onnx.GraphProto, node: onnx.NodeProto) -> SplitQuant:
    scale, zero = _init(graph, node.input[1]), _init(graph, node.input[2])
    if zero.dtype != np.uint8 or scale.size != 1:
        raise ExportError(
            f"quantized graph: split tensor is {zero.dtype} with {scale.size} scales; "
            "expected one uint8 scale"
        )
    return SplitQuant(float(scale.reshape(())), int(zero.reshape(())))


def cut_edge(model: onnx.ModelProto) -> SplitQuant:
    """Make the edge output the uint8 its final QuantizeLinear produces; returns its code."""
    graph = model.graph
    dq = _producer(graph, OUTPUT_NAME)
    q = _producer(graph, dq.input[0]) if dq is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or q is None or q.op_type != "QuantizeLinear":
        raise ExportError(
            "edge.onnx (INT8): the quantizer did not end the edge with QuantizeLinear -> "
            "DequantizeLinear, so the split tensor cannot be sent as uint8"
        )
    split = _quant_params(graph, dq)
    q_out = q.output[0]
    graph.node.remove(dq)
    for node in graph.node:  # the quantized tensor is now the graph output
        node.output[:] = [OUTPUT_NAME if n == q_out else n for n in node.output]
        node.input[:] = [OUTPUT_NAME if n == q_out else n for n in node.input]
    graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    return split


def cut_cloud(model: onnx.ModelProto, split: SplitQuant) -> None:
    """Make the cloud take uint8: drop its input QuantizeLinear (same code as the edge's)."""
    graph = model.graph
    users = _consumers(graph, INPUT_NAME)
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise ExportError(
            "cloud.onnx (INT8): the quantizer did not start the cloud with one QuantizeLinear; "
            "cannot take the split tensor as uint8"
        )
    q = users[0]
    got = _quant_params(graph, q)
    if not (np.isclose(got.scale, split.scale, rtol=1e-6) and got.zero_point == split.zero_point):
        raise ExportError(
            f"cloud.onnx (INT8): input code (scale {got.scale:.6g}, zero point {got.zero_point}) "
            f"differs from the edge's ({split.scale:.6g}, {split.zero_point})"
        )
    graph.node.remove(q)
    for node in graph.node:
        node.input[:] = [INPUT_NAME if n == q.output[0] else n for n in node.input]
    graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8


class _Reader:
    """ORT's CalibrationDataReader protocol over fixed batches (duck-typed: get_next)."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self) -> None:  # part of the protocol; calibration runs once
        return None


def _quantize(src: Path, dst: Path, batches: list[np.ndarray], extra: dict[str, Any]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    prepared = dst.with_name(dst.stem + ".pre.onnx")
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(batches)
    try:
        with quiet_tools():
            quant_pre_process(str(src), str(prepared))  # shapes + constant folding, as ORT advises
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )
    except ExportError:
        raise
    except Exception as exc:  # ORT raises plain Exceptions from many layers
        first = first_line(exc)
        raise ExportError(f"ONNX Runtime quantization of {src.name} failed: {first}") from exc
    finally:
        prepared.unlink(missing_ok=True)


def ort_session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """One model on ONNX Runtime's CPU provider (spinning off: the cores are shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {INPUT_NAME: x})[0])

    return run


def ort_pipeline(edge: Path, cloud: Path, split: SplitQuant | None, threads: int) -> Pipeline:
    """Edge then cloud; an INT8 edge's uint8 goes to the cloud as is, dequantized for diffs."""
    e, c = ort_session(edge, threads), ort_session(cloud, threads)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sent = e(x)
        out = c(sent)
        return (split.dequantize(sent) if split is not None else sent), out

    return run


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())  # follows --threads, as the torch export does


def export_onnx_int8(job: ExportJob) -> list[str]:
    """Write INT8 edge.onnx (float in, uint8 out) and cloud.onnx (uint8 in), parity-judged."""
    data: Int8Data = require_data(job.int8)
    ref = Path(tempfile.mkdtemp(prefix=".fp32-reference.", dir=job.work_dir))
    edge_path, cloud_path = job.work_dir / EDGE_ONNX, job.work_dir / CLOUD_ONNX
    threads = _threads()
    try:
        export_onnx_float(dataclasses.replace(job, work_dir=ref, precision="fp32", int8=None))
        _quantize(ref / EDGE_ONNX, edge_path, calibration_batches(data.calibration), {})
        edge_model = onnx.load(str(edge_path))
        split = cut_edge(edge_model)
        onnx.save(edge_model, str(edge_path))
        check_onnx_file(edge_path)

        edge = ort_session(edge_path, threads)
        _check_sent(job, edge)
        sent = [split.dequantize(edge(x)) for x in calibration_batches(data.calibration)]
        override = {
            INPUT_NAME: [
                {
                    "scale": np.array(split.scale, dtype=np.float32),
                    "zero_point": np.array(split.zero_point, dtype=np.uint8),
                }
            ]
        }
        _quantize(ref / CLOUD_ONNX, cloud_path, sent, {"TensorQuantOverrides": override})
        cloud_model = onnx.load(str(cloud_path))
        cut_cloud(cloud_model, split)
        onnx.save(cloud_model, str(cloud_path))
        check_onnx_file(cloud_path)

        int8 = ort_pipeline(edge_path, cloud_path, split, threads)
        version = importlib.metadata.version("onnxruntime")
        parity = judge_parity(
            data,
            ort_pipeline(ref / EDGE_ONNX, ref / CLOUD_ONNX, None, threads),
            int8,
            f"onnxruntime {version} CPU",
        )
    finally:
        shutil.rmtree(ref, ignore_errors=True)
    job.quantization = {
        "tool": f"onnxruntime.quantization {version} quantize_static",
        "format": "QDQ",
        "weights": "int8 in a 7-bit range (reduce_range), symmetric, per output channel",
        "activations": "uint8, per tensor, MinMax calibration",
        "calibration": data.source,
        "split_tensor": split.record(fp32_edge_bytes(job.edge_ref)),
        "parity": parity,
    }
    enforce_parity(parity, data)
    return [EDGE_ONNX, CLOUD_ONNX]


def _check_sent(job: ExportJob, edge: Callable[[np.ndarray], np.ndarray]) -> None:
    """The INT8 edge on the job's random batch: uint8 of exactly the torch edge's shape."""
    sent = edge(job.sample)
    if sent.dtype != np.uint8 or sent.shape != job.edge_ref.shape:
        raise ExportError(
            f"{EDGE_ONNX} (INT8): sends {sent.dtype} {list(sent.shape)}, expected uint8 "
            f"{list(job.edge_ref.shape)}"
        )
