"""INT8 OpenVINO IR: NNCF post-training quantization with a uint8 split tensor.

Both partitions are exported and checked in FP32 first (ONNX, into a private
folder deleted afterwards), converted with ``ov.convert_model`` and quantized
with ``nncf.quantize`` (default preset: symmetric int8 weights per channel,
activation ranges from the calibration images, fast bias correction). NNCF
marks quantized tensors with FakeQuantize nodes, which OpenVINO's CPU plugin
runs as int8 kernels; it never quantizes a model's output, so left alone the
edge would still send float32.

So the split is cut by hand, in the pattern OpenVINO itself uses for ONNX's
QuantizeLinear/DequantizeLinear (and its low-precision transformations
recognise): the edge ends with ``FakeQuantize(levels=256) -> Convert(u8)``, the
cloud's parameter is ``u8`` and starts with ``Convert(f32) -> Subtract(zero
point) -> Multiply(scale)``. The scale and zero point cover the min/max of the
quantized edge's outputs on the calibration images (:class:`SplitQuant`); the
cloud is then calibrated by NNCF on the very uint8 tensors the edge sends.

The artifact holds the IR only (``edge.xml/.bin``, ``cloud.xml/.bin``): the
FP32 ONNX it came from is not INT8, and a file that runs differently from the
IR would misstate what is deployed.

Every model the export runs is compiled on one ``ov.Core``: each Core carries
its own CPU plugin, and plugins released in the order they were created leave
the thread's alternate signal stack unmapped (:mod:`patrol_compress.signal_stack`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.contracts import (
    CLOUD_BIN,
    CLOUD_ONNX,
    CLOUD_XML,
    EDGE_BIN,
    EDGE_ONNX,
    EDGE_XML,
)
from patrol_compress.errors import ExportError, first_line, import_optional

from .base import INPUT_NAME, OUTPUT_NAME, ExportJob
from .int8 import (
    Int8Data,
    Pipeline,
    SplitQuant,
    enforce_parity,
    fp32_edge_bytes,
    judge_parity,
    quiet_tools,
    require_data,
)
from .onnx_float import export_onnx_float
from .openvino_float import F32_CONFIG, import_openvino


def import_nncf() -> ModuleType:
    """``nncf``, or MissingExtraError naming the extra (it ships with ``[openvino]``)."""
    return import_optional("nncf", "openvino", "INT8 export for OpenVINO")


def _compiled(core: Any, model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A model (object or IR path) compiled on ``core``'s CPU with the f32 hint, as bench runs it.

    The hint only keeps the *non*-quantized parts in f32 (this CPU would run
    them in bf16); FakeQuantize-marked ops still run as int8.
    """
    compiled = core.compile_model(
        model if not isinstance(model, Path) else str(model), "CPU", dict(F32_CONFIG)
    )
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[compiled.output(0)])

    return run


def _quantize(nncf: ModuleType, model: Any, items: list[np.ndarray], what: str) -> Any:
    """``nncf.quantize`` over one item per calibration image (NNCF counts items in subset_size).

    Activation ranges are the global min/max over the calibration images, the
    rule ORT's MinMax uses, so both targets calibrate alike. NNCF's default
    (the *mean* of per-image min/max) clips the largest activations: on the
    quickstart's PATROL edge it cost 3.3 rank-1 points against 0.6 with min/max.
    NNCF's overflow fix (first layer's weights at 7 bits, so int8 sums cannot
    saturate on CPUs without VNNI) stays on: a deployed edge may be such a CPU.
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
    )
    try:
        with quiet_tools():
            return nncf.quantize(
                model,
                nncf.Dataset(items),
                subset_size=len(items),
                fast_bias_correction=True,
                advanced_parameters=advanced,
            )
    except Exception as exc:  # NNCF raises its own error types
        first = first_line(exc)
        raise ExportError(f"NNCF quantization of the {what} failed: {first}") from exc


def _send_uint8(ov: ModuleType, model: Any, split: SplitQuant) -> Any:
    """The edge with ``FakeQuantize -> Convert(u8)`` appended: it outputs the uint8 it sends."""
    ops = ov.opset13
    (result,) = model.get_results()
    low = np.float32(split.scale * (0 - split.zero_point))
    high = np.float32(split.scale * (255 - split.zero_point))
    fq = ops.fake_quantize(
        result.input_value(0),
        ops.constant(low),
        ops.constant(high),
        ops.constant(np.float32(0)),
        ops.constant(np.float32(255)),
        256,
    )
    sent = ops.convert(fq, "u8")
    sent.output(0).set_names({OUTPUT_NAME})
    result.input_value(0).get_tensor().set_names(set())  # the name moves to the uint8 output
    return ov.Model([sent], model.get_parameters(), "edge")


def _take_uint8(ov: ModuleType, model: Any, split: SplitQuant) -> Any:
    """The cloud with a ``u8`` parameter and ``Convert -> Subtract(zp) -> Multiply(scale)``."""
    ops = ov.opset13
    (old,) = model.get_parameters()
    param = ops.parameter(old.get_partial_shape(), ov.Type.u8, name=INPUT_NAME)
    real = ops.multiply(
        ops.subtract(ops.convert(param, "f32"), ops.constant(np.float32(split.zero_point))),
        ops.constant(np.float32(split.scale)),
    )
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(real.output(0))
    old.output(0).get_tensor().set_names(set())
    param.output(0).set_names({INPUT_NAME})
    return ov.Model(model.get_results(), [param], "cloud")


def _pipeline(
    edge: Callable[[np.ndarray], np.ndarray],
    cloud: Callable[[np.ndarray], np.ndarray],
    split: SplitQuant | None,
) -> Pipeline:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sent = edge(x)
        out = cloud(sent)
        return (split.dequantize(sent) if split is not None else sent), out

    return run


def export_openvino_int8(job: ExportJob) -> list[str]:
    """Write INT8 edge/cloud IR (edge outputs u8, cloud takes u8), judged by task accuracy."""
    ov, nncf = import_openvino(), import_nncf()
    core = ov.Core()
    data: Int8Data = require_data(job.int8)
    ref = Path(tempfile.mkdtemp(prefix=".fp32-reference.", dir=job.work_dir))
    items = [data.calibration[i : i + 1] for i in range(len(data.calibration))]
    try:
        export_onnx_float(dataclasses.replace(job, work_dir=ref, precision="fp32", int8=None))
        for part, onnx_name in (("edge", EDGE_ONNX), ("cloud", CLOUD_ONNX)):
            ov.save_model(
                ov.convert_model(str(ref / onnx_name)),
                str(ref / f"{part}.xml"),
                compress_to_fp16=False,
            )
        edge_q = _quantize(nncf, ov.convert_model(str(ref / EDGE_ONNX)), items, "edge")
        run_q = _compiled(core, edge_q)
        feats = np.concatenate([run_q(x) for x in items])
        split = SplitQuant.from_range(float(feats.min()), float(feats.max()))
        edge_u8 = _send_uint8(ov, edge_q, split)
        edge_xml = job.work_dir / EDGE_XML
        ov.save_model(edge_u8, str(edge_xml), compress_to_fp16=False)
        send = _compiled(core, edge_xml)
        sent = [send(x) for x in items]
        if sent[0].dtype != np.uint8 or sent[0].shape[1:] != job.edge_ref.shape[1:]:
            raise ExportError(
                f"{EDGE_XML} (INT8): sends {sent[0].dtype} {list(sent[0].shape[1:])}, expected "
                f"uint8 {list(job.edge_ref.shape[1:])}"
            )
        cloud_u8 = _take_uint8(ov, ov.convert_model(str(ref / CLOUD_ONNX)), split)
        cloud_q = _quantize(nncf, cloud_u8, sent, "cloud")
        cloud_xml = job.work_dir / CLOUD_XML
        ov.save_model(cloud_q, str(cloud_xml), compress_to_fp16=False)
        parity = judge_parity(
            data,
            _pipeline(_compiled(core, ref / EDGE_XML), _compiled(core, ref / CLOUD_XML), None),
            _pipeline(send, _compiled(core, cloud_xml), split),
            f"OpenVINO {ov.__version__.split('-')[0]} CPU, f32 hint",
        )
    except ExportError:
        raise
    except Exception as exc:  # OpenVINO raises its own RuntimeError types
        first = first_line(exc)
        raise ExportError(f"OpenVINO INT8 export failed: {first}") from exc
    finally:
        shutil.rmtree(ref, ignore_errors=True)
    job.quantization = {
        "tool": f"nncf {importlib.metadata.version('nncf')} quantize (OpenVINO model)",
        "format": "OpenVINO IR with FakeQuantize",
        "weights": "int8, symmetric, per output channel (NNCF default preset)",
        "activations": "int8/uint8, per tensor, global min/max calibration, fast bias correction",
        "calibration": data.source,
        "split_tensor": split.record(fp32_edge_bytes(job.edge_ref)),
        "parity": parity,
    }
    enforce_parity(parity, data)
    return [EDGE_XML, EDGE_BIN, CLOUD_XML, CLOUD_BIN]
