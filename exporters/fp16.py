"""Convert an FP32 ONNX graph to FP16, keeping chosen inputs and outputs in FP32.

Written here rather than taken from ``onnxconverter-common`` (not a dependency,
and its converter has a block list tuned for transformer graphs). The graphs we
export are plain CNN partitions (Conv, Relu, Add, MaxPool, GlobalAveragePool,
Flatten, Gemm, BatchNormalization), so a whole-graph cast is enough:

* every FP32 initializer, ``Constant`` and ``Cast(to=FLOAT)`` becomes FP16;
* every FP32 graph input/output becomes FP16, except the ones named in
  ``keep_fp32``, which stay FP32 and get a ``Cast`` node at the boundary.

The split tensor (edge output, cloud input) is deliberately *not* kept in FP32:
it is what the edge sends, so an FP16 artifact really halves the uplink bytes.
The image input and the final embedding stay FP32 so callers need not care.
ONNX Runtime's CPU provider runs FP16 nodes it has no FP16 kernel for by
inserting casts, so the converted graph runs everywhere; TensorRT 11 builds it
as a strongly typed FP16 network.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from patrol_compress.errors import ExportError, first_line

FP16_MAX = float(np.finfo(np.float16).max)


def _to_fp16_tensor(tensor: TensorProto, where: str) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > FP16_MAX:
        raise ExportError(
            f"{where}: values up to {float(np.abs(finite).max()):.3g} overflow FP16 "
            f"(max {FP16_MAX:.0f}); export this model in fp32"
        )
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def _set_fp16_type(value: onnx.ValueInfoProto) -> None:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type == TensorProto.FLOAT:
        tensor_type.elem_type = TensorProto.FLOAT16


def _copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """Return an FP16 copy of ``model``; graph inputs/outputs in ``keep_fp32`` stay FP32."""
    keep = set(keep_fp32)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise ExportError("FP16 conversion does not handle control flow (If/Loop/Scan) graphs")
    known = {v.name for v in (*graph.input, *graph.output)}
    unknown = keep - known
    if unknown:
        raise ExportError(f"keep_fp32 names {sorted(unknown)}, which are not graph inputs/outputs")

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(_to_fp16_tensor(init, f"initializer '{init.name}'"))

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_to_fp16_tensor(attr.t, f"{node.op_type} node '{node.name}'"))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16

    boundary: list[onnx.NodeProto] = []
    for inp in graph.input:
        if inp.name in keep and inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{inp.name}__fp16"
            for node in graph.node:
                node.input[:] = [inner if n == inp.name else n for n in node.input]
            boundary.append(
                helper.make_node(
                    "Cast", [inp.name], [inner], to=TensorProto.FLOAT16, name=f"{inp.name}__to_fp16"
                )
            )
        else:
            _set_fp16_type(inp)
    tail: list[onnx.NodeProto] = []
    for outp in graph.output:
        if outp.name in keep and outp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{outp.name}__fp16"
            for node in graph.node:  # the producer and any internal consumers
                node.output[:] = [inner if n == outp.name else n for n in node.output]
                node.input[:] = [inner if n == outp.name else n for n in node.input]
            tail.append(
                helper.make_node(
                    "Cast", [inner], [outp.name], to=TensorProto.FLOAT, name=f"{outp.name}__to_fp32"
                )
            )
        else:
            _set_fp16_type(outp)

    nodes = [_copy_node(n) for n in (*boundary, *graph.node, *tail)]
    del graph.node[:]
    graph.node.extend(nodes)
    # Intermediate types are re-derived from the new initializer and input types.
    del graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
        onnx.checker.check_model(inferred)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = first_line(exc)
        raise ExportError(f"FP16 conversion produced an invalid graph: {first}") from None
    return inferred
