"""INT8 export, the part both runtimes share: data, the split tensor's uint8 code, parity.

FP32 and FP16 artifacts are checked element by element against torch on a
random batch. INT8 cannot be: post-training quantization moves every output by
a few quantization steps, so "close to torch" has no meaningful tolerance, and a
random batch says nothing about the activation ranges real images produce. So
an INT8 export needs data, and is judged by what a deployment cares about:

* **calibration** on the recipe's *training* images (a seeded random subset,
  :data:`DEFAULT_CALIBRATION_IMAGES` by default): activation ranges come from
  the distribution the model was trained on, never from the test images the
  parity is measured on;
* **parity** by task accuracy on the recipe's test set (rank-1 for re-id, top-1
  for classification), the whole INT8 edge + cloud against the FP32 export on the
  same runtime, within :data:`MAX_DROP_POINTS`; the maximum output differences
  are recorded beside it. A failed parity is an error (nothing is written)
  unless the caller allows it, in which case the manifest says ``passed: false``.

The split tensor (edge output, cloud input) is sent as **uint8** with one
per-tensor scale and zero point (:class:`SplitQuant`): the edge ends with the
quantization, the cloud starts with the dequantization, so the uplink carries a
quarter of the FP32 bytes. Runtime-specific code lives in ``onnx_int8`` (ONNX
Runtime static QDQ) and ``openvino_int8`` (NNCF).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from patrol_compress.errors import ExportError

if TYPE_CHECKING:
    from patrol_compress.data.base import DataBundle

DEFAULT_CALIBRATION_IMAGES = 300
"""Calibration images when the caller names none: ORT's and NNCF's usual subset
size; min/max ranges of a CNN's activations settle well before that."""
MAX_DROP_POINTS = 1.0
"""INT8 may lose at most this many accuracy points (rank-1 / top-1) against FP32."""
EVAL_BATCH = 64
CALIBRATION_BATCH = 32

Pipeline = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Images -> (edge features as float, cloud output): one artifact run end to end.
For INT8 the features are the dequantized uint8 the edge sends."""


@dataclass(frozen=True)
class TestSet:
    """Test images in batches and how to score the model's outputs on them, in order."""

    batches: Callable[[], Iterator[np.ndarray]]
    score: Callable[[np.ndarray], dict[str, float]]
    metric: str
    images: int


@dataclass(frozen=True)
class Int8Data:
    """What an INT8 export needs besides the model: calibration images and a test set.

    ``calibration`` is N x C x H x W float32 in the model's input space;
    ``source`` describes where the images came from (recipe, seed, counts) and
    goes into the manifest. ``allow_parity_fail`` writes an artifact whose
    accuracy dropped more than ``max_drop_points`` (flagged ``passed: false``).
    """

    calibration: np.ndarray
    test: TestSet
    source: dict[str, Any] = field(default_factory=dict)
    max_drop_points: float = MAX_DROP_POINTS
    allow_parity_fail: bool = False


@dataclass(frozen=True)
class SplitQuant:
    """The uint8 code of the split tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0) or not 0 <= self.zero_point <= 255:
            raise ExportError(
                f"split tensor quantization is unusable (scale {self.scale!r}, zero point "
                f"{self.zero_point!r}): the edge output is constant on the calibration images"
            )

    @classmethod
    def from_range(cls, low: float, high: float) -> SplitQuant:
        """Asymmetric uint8 covering [low, high] and 0 (0 stays exact: ReLU zeros are common)."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = (high - low) / 255.0
        if scale <= 0:
            raise ExportError(
                "the edge output is all zeros on the calibration images; nothing to quantize"
            )
        return cls(scale, int(np.clip(round(-low / scale), 0, 255)))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """The real values the uint8 ``q`` stands for (what the cloud computes on)."""
        shifted = q.astype(np.float32) - np.float32(self.zero_point)
        return (np.float32(self.scale) * shifted).astype(np.float32)

    def record(self, fp32_bytes: int) -> dict[str, Any]:
        return {
            "dtype": "uint8",
            "scale": float(self.scale),
            "zero_point": int(self.zero_point),
            "bytes_sent_fp32": int(fp32_bytes),
        }


def require_data(data: Int8Data | None) -> Int8Data:
    """The job's INT8 data, or one line saying where it comes from."""
    if data is None:
        raise ExportError(
            "precision int8 needs calibration and test images: export from a run "
            "(patrol-compress export RUN --precision int8) or pass int8=Int8Data(...)"
        )
    return data


def calibration_batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    return [images[i : i + batch] for i in range(0, len(images), batch)]


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence the quantizers' own output while they run.

    ORT's quantizer logs advice on the root logger and NNCF draws progress bars
    on stdout; the export command prints one table and its own parity lines, and
    real errors still arrive as exceptions.
    """
    root = logging.getLogger()
    nncf_logger = logging.getLogger("nncf")
    before = root.level, nncf_logger.level
    root.setLevel(logging.ERROR)
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(before[0])
        nncf_logger.setLevel(before[1])


def judge_parity(data: Int8Data, fp32: Pipeline, int8: Pipeline, runtime: str) -> dict[str, Any]:
    """Run both artifacts over the test set: accuracy of each and how far their outputs differ.

    Differences are absolute, beside the FP32 output's largest magnitude so a
    reader can tell a large number on a large output from a real error.
    """
    outs32: list[np.ndarray] = []
    outs8: list[np.ndarray] = []
    edge_diff = out_diff = edge_max = out_max = 0.0
    for x in data.test.batches():
        feat32, out32 = fp32(x)
        feat8, out8 = int8(x)
        if feat8.shape != feat32.shape or out8.shape != out32.shape:
            raise ExportError(
                f"INT8 artifact outputs {list(feat8.shape[1:])} / {list(out8.shape[1:])}, "
                f"FP32 {list(feat32.shape[1:])} / {list(out32.shape[1:])}"
            )
        if not (np.isfinite(feat8).all() and np.isfinite(out8).all()):
            raise ExportError("the INT8 artifact outputs NaN/Inf on test images")
        edge_diff = max(edge_diff, float(np.abs(feat8 - feat32).max()))
        out_diff = max(out_diff, float(np.abs(out8 - out32).max()))
        edge_max = max(edge_max, float(np.abs(feat32).max()))
        out_max = max(out_max, float(np.abs(out32).max()))
        outs32.append(out32)
        outs8.append(out8)
    if not outs32:
        raise ExportError("the test set is empty; INT8 parity needs test images")
    metric = data.test.metric
    acc32 = data.test.score(np.concatenate(outs32))
    acc8 = data.test.score(np.concatenate(outs8))
    drop = round(100.0 * (acc32[metric] - acc8[metric]), 6)
    return {
        "metric": metric,
        "images": data.test.images,
        "runtime": runtime,
        "fp32": acc32[metric],
        "int8": acc8[metric],
        "drop_points": drop,
        "max_drop_points": data.max_drop_points,
        "passed": bool(drop <= data.max_drop_points),
        "fp32_all": acc32,
        "int8_all": acc8,
        "max_abs_diff": {"edge_output": edge_diff, "output": out_diff},
        "max_abs_fp32": {"edge_output": edge_max, "output": out_max},
    }


def enforce_parity(parity: dict[str, Any], data: Int8Data) -> None:
    """Raise ExportError (nothing is written) on a failed parity, unless it is allowed."""
    if parity["passed"] or data.allow_parity_fail:
        return
    raise ExportError(
        f"INT8 accuracy parity failed: {parity_line(parity)}; nothing was written "
        "(more --calibration-images may help; --allow-parity-fail writes it anyway, "
        "flagged in manifest.json)"
    )


def parity_line(parity: dict[str, Any]) -> str:
    """'rank-1 90.6% fp32 -> 90.3% int8 (drop 0.3 points, allowed 1.0)' for CLI and errors."""
    name = {"rank1": "rank-1", "top1": "top-1"}.get(parity["metric"], parity["metric"])
    return (
        f"{name} {100 * parity['fp32']:.1f}% fp32 -> {100 * parity['int8']:.1f}% int8 on "
        f"{parity['images']} test images (drop {parity['drop_points']:.1f} points, allowed "
        f"{parity['max_drop_points']:.1f})"
    )


def int8_data_from_bundle(
    bundle: DataBundle,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    source: dict[str, Any] | None = None,
    max_drop_points: float = MAX_DROP_POINTS,
    allow_parity_fail: bool = False,
) -> Int8Data:
    """Calibration images (a seeded subset of ``bundle.train``) and the test set of a DataBundle.

    The subset is drawn with its own generator from ``seed``, so the same
    recipe calibrates on the same images every time, whatever ran before.
    """
    import torch
    from torch.utils.data import DataLoader

    from patrol_compress.train.evaluate import score_outputs, test_datasets

    if calibration_images < 1:
        raise ExportError(f"--calibration-images must be >= 1, found {calibration_images}")
    train = bundle.train
    n = min(calibration_images, len(train))
    if n == 0:
        raise ExportError("the recipe's training split is empty; INT8 needs calibration images")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    was = train.augment
    train.set_augment(False)  # calibrate on the images as they are, not on random flips
    try:
        calib = np.stack([train[int(i)][0].numpy() for i in order]).astype(np.float32)
    finally:
        train.set_augment(was)
    sets = test_datasets(bundle)

    def batches() -> Iterator[np.ndarray]:
        for ds in sets:
            before = ds.augment
            ds.set_augment(False)
            try:
                for x, _, _ in DataLoader(ds, batch_size=EVAL_BATCH, shuffle=False):
                    yield x.numpy().astype(np.float32)
            finally:
                ds.set_augment(before)

    metric = "top1" if bundle.task == "classification" else "rank1"
    test = TestSet(
        batches, lambda out: score_outputs(bundle, out), metric, sum(len(ds) for ds in sets)
    )
    described = {
        **(source or {}),
        "split": "train",
        "images": n,
        "of": len(train),
        "seed": seed,
        "test_images": test.images,
    }
    return Int8Data(calib, test, described, max_drop_points, allow_parity_fail)


def fp32_edge_bytes(edge_ref: np.ndarray) -> int:
    """Bytes one image's fp32 edge output takes (``edge_ref`` is a batch of them)."""
    return int(np.prod(edge_ref.shape[1:])) * 4
