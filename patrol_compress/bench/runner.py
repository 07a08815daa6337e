"""``bench``: latency, throughput, memory and uplink cost of an exported edge partition.

What a deployment decision needs from the edge side, measured the same way on
every device: per batch size one fresh session, an untimed warm-up, then a
timed block (see :mod:`patrol_compress.bench.timing` for the budgets and
loops, :mod:`patrol_compress.bench.runtimes` for what one call is); latency
percentiles (p50 is the median, so one slow call does not move the headline),
images/s, peak memory above the idle process (see
:mod:`patrol_compress.bench.memory`), and the bytes the edge must send per
image from the manifest.

Budgets, as ``benchmark_app``: by default ``DEFAULT_SECONDS`` timed seconds
after ``DEFAULT_WARMUP_SECONDS`` of warm-up per batch size. ``runs`` (a count
of timed calls, the old interface) replaces ``seconds`` and ``warmup`` (a
count of untimed calls) replaces ``warmup_seconds``; giving both members of a
pair is an error rather than a silent precedence, so a script written for
one never measures the other. ``mode="throughput"`` keeps several requests in
flight and reports images/s over the wall time of the block. With ``uplink_mbps`` the transfer
time and an end-to-end edge estimate (median per-image compute + transfer)
are added. The manifest's checksums are verified before anything is loaded, so
a tampered artifact is never timed, and the runtime loads private copies of
exactly the listed files (an unlisted external-data file is never read). Torch is never imported.
"""

from __future__ import annotations

import gc
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from patrol_compress.bench.memory import PeakRss
from patrol_compress.bench.runtimes import (
    RUNTIME_NAMES,
    RUNTIMES,
    TORCH_REFUSAL,
    BenchError,
    Runtime,
    runtime_version,
)
from patrol_compress.bench.staging import staged_copy
from patrol_compress.bench.timing import (
    DEFAULT_SECONDS,
    DEFAULT_WARMUP_SECONDS,
    MODES,
    Budget,
)
from patrol_compress.contracts import MANIFEST, verify_manifest
from patrol_compress.errors import ArtifactError, OutputExistsError, first_line
from patrol_compress.io import package_versions, write_json
from patrol_compress.machine import check_thread_count


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Plan:
    """The resolved measurement: mode, warm-up and timed budgets (see the module docstring)."""

    mode: str
    warmup: Budget
    timed: Budget


MAX_SECONDS = 3600.0
"""Longest timed or warm-up block per batch size (``--seconds 1e308`` overflowed the
deadline and the error blamed the manifest)."""
MAX_CALLS = 10_000_000
"""Most timed or warm-up calls per batch size (``--runs 10**30`` never ended)."""
MAX_BATCH = 4096
"""Largest batch size timed (the recipe's latency budget has the same bound)."""


def _finite(value: float | None, name: str, flag: str, strictly_positive: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BenchError(f"{name} ({flag}) must be a number, found {value!r}"[:200])
    bound = "> 0" if strictly_positive else ">= 0"
    ok = math.isfinite(value) and (value > 0 if strictly_positive else value >= 0)
    if not ok:
        raise BenchError(f"{name} ({flag}) must be a finite number {bound}, found {value}")
    if value > MAX_SECONDS:
        raise BenchError(
            f"{name} ({flag}) {value:g}: at most {MAX_SECONDS:g} seconds per batch size"
        )


def _calls(value: int | None, name: str, flag: str, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_CALLS:
        raise BenchError(
            f"{name} ({flag}) {value!r}: expected a whole number of calls in {low}..{MAX_CALLS:,}"
        )


def plan(
    mode: str = "latency",
    runs: int | None = None,
    seconds: float | None = None,
    warmup: int | None = None,
    warmup_seconds: float | None = None,
) -> Plan:
    """Turn the four budget options into one plan, refusing contradictory pairs in one line."""
    if mode not in MODES:
        raise BenchError(f"unknown mode '{mode}' (--mode): expected one of {list(MODES)}")
    if runs is not None and seconds is not None:
        raise BenchError(
            "give --runs (a count of timed calls) or --seconds (a time), not both; "
            f"found runs={runs}, seconds={seconds}"
        )
    if warmup is not None and warmup_seconds is not None:
        raise BenchError(
            "give --warmup (a count of untimed calls) or --warmup-seconds (a time), not both; "
            f"found warmup={warmup}, warmup_seconds={warmup_seconds}"
        )
    _calls(warmup, "warmup", "--warmup", 0)
    _calls(runs, "runs", "--runs", 1)
    _finite(seconds, "seconds", "--seconds", strictly_positive=True)
    _finite(warmup_seconds, "warmup_seconds", "--warmup-seconds", strictly_positive=False)
    timed = Budget(calls=runs) if runs is not None else Budget(seconds=seconds or DEFAULT_SECONDS)
    if warmup is not None:
        warm = Budget(calls=warmup)
    else:
        warm = Budget(seconds=DEFAULT_WARMUP_SECONDS if warmup_seconds is None else warmup_seconds)
    return Plan(mode, warm, timed)


def _validate(batches: Sequence[int], threads: int | None, uplink_mbps: float | None) -> None:
    if isinstance(batches, (str, bytes)) or not batches:
        raise BenchError(f"batches (--batch) must be batch sizes like [1, 8], found {batches!r}")
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
            raise BenchError(
                f"batch size (--batch) {b!r}: expected a whole number in 1..{MAX_BATCH}"
            )
    check_thread_count(threads, "threads")
    if uplink_mbps is not None and (
        isinstance(uplink_mbps, bool)
        or not isinstance(uplink_mbps, (int, float))
        or not (math.isfinite(uplink_mbps) and uplink_mbps > 0)
    ):
        raise BenchError(
            f"uplink_mbps (--uplink-mbps) must be a finite number > 0, found {uplink_mbps}"
        )


OV_PRECISION_HINTS = ("f32", "f16", "bf16")
"""OpenVINO's INFERENCE_PRECISION_HINT values (None or '': the plugin's default)."""


def check_ov_hint(hint: str | None) -> None:
    """``--ov-precision-hint`` is one of OpenVINO's (a bogus one failed inside the plugin)."""
    if hint not in (None, "", *OV_PRECISION_HINTS):
        raise BenchError(
            f"ov_precision_hint (--ov-precision-hint) {str(hint)[:40]!r}: expected one of "
            f"{', '.join(OV_PRECISION_HINTS)}, or '' for OpenVINO's default"
        )


def check_json_path(path: Path, force: bool) -> None:
    """``--json FILE`` must not be a folder nor hold an earlier report (unless force), and
    its folder must be a folder: checked before seconds of timing, not after."""
    if path.is_dir():
        raise OutputExistsError(f"{path}: --json needs a file name, found a folder")
    for part in path.parents:
        if part.exists():
            if not part.is_dir():
                raise OutputExistsError(
                    f"{part}: exists and is not a folder, so --json {path} cannot be written"
                )
            break
    if path.exists() and not force:
        raise OutputExistsError(
            f"{path}: already exists; pass --force to replace it or choose another --json file"
        )


def transfer_ms(bytes_per_image: int, uplink_mbps: float) -> float:
    """Milliseconds to send one image's split tensor over an uplink of ``uplink_mbps`` Mbit/s."""
    return bytes_per_image * 8 / (uplink_mbps * 1e6) * 1e3


def _time_batches(
    backend: Runtime,
    module: ModuleType,
    root: Path,
    input_shape: tuple[int, ...],
    batches: Sequence[int],
    threads: int | None,
    how: Plan,
    options: dict[str, Any],
) -> tuple[list[dict[str, Any]], str, list[str]]:
    """One fresh session per batch size: warm-up, timed block, percentiles and peak memory."""
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    rss_method = "none"
    edge_files: list[str] = []
    for batch in (int(b) for b in batches):
        gc.collect()
        memory = PeakRss()
        memory.start()
        session = backend.open(module, root, (batch, *input_shape), threads, options)
        try:
            x = rng.standard_normal((batch, *input_shape)).astype(session.input_dtype)
            try:
                measure = session.prepare(x)
                measure(how.warmup)
                timing = measure(how.timed)
            except Exception as exc:  # runtimes raise their own types; the user needs one line
                first = first_line(exc)[:200]
                raise ArtifactError(
                    f"{root}: the edge partition does not run on input shape "
                    f"{[batch, *input_shape]} (manifest.json's input_shape): {first}"
                ) from None
            peak = memory.peak_mb()
        finally:
            session.close()
        rss_method, edge_files = memory.method, session.files
        settings = session.settings
        del session, measure
        times_ms = timing.times_ms
        p50, p90, p99 = (float(v) for v in np.percentile(times_ms, [50, 90, 99]))
        images_per_s = timing.calls * batch / timing.duration_s if timing.duration_s > 0 else 0.0
        results.append(
            {
                "batch": batch,
                "p50_ms": round(p50, 4),
                "p90_ms": round(p90, 4),
                "p99_ms": round(p99, 4),
                "mean_ms": round(float(times_ms.mean()), 4),
                "wall_p50_ms": (
                    round(float(np.median(timing.wall_ms)), 4)
                    if timing.wall_ms is not None
                    else None
                ),
                "per_image_ms": round(p50 / batch, 4),
                # latency mode: what one request at a time sustains (batch / p50, as
                # before); throughput mode: the measured rate with all streams busy.
                "throughput": round(
                    batch / (p50 / 1e3) if how.mode == "latency" else images_per_s, 2
                ),
                "images_per_s": round(images_per_s, 2),
                "calls": timing.calls,
                "duration_s": round(timing.duration_s, 4),
                "streams": timing.streams,
                "runtime_settings": settings,
                "peak_rss_mb": peak,
                "_p50": p50,
            }
        )
    return results, rss_method, edge_files


TIMER = {
    "onnxruntime": "perf_counter around each run_with_iobinding (input and output bound once)",
    "openvino": "OpenVINO's own request.latency of each infer() (as benchmark_app; input "
    "tensor set once, outputs not copied); wall_p50_ms: perf_counter around the call",
    "trt": "perf_counter around each call (host-to-device copy, execute, copy back)",
    "onnxruntime-throughput": "perf_counter around each call in each stream's thread",
    "openvino-throughput": "each infer request's own latency (AsyncInferQueue, as benchmark_app)",
}
"""What a reported latency covers, per runtime and mode (recorded in the report)."""


MAX_INPUT_BYTES = 4 * 2**30
"""Largest float32 input batch bench generates (a larger input_shape is refused, not tried)."""


def _input_shape(shape: list[int], root: Path, batch: int) -> tuple[int, ...]:
    """manifest.json's input_shape: positive sizes whose largest batch fits in memory.

    An edited manifest (its own checksum is not listed) made bench die with a
    MemoryError or a numpy ValueError traceback while drawing the random input.
    """
    where = f"{root / MANIFEST}: input_shape {shape}"
    if not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ArtifactError(f"{where}: expected positive sizes (C, H, W of the exported model)")
    one = math.prod(shape) * 4
    if one > MAX_INPUT_BYTES:
        raise ArtifactError(
            f"{where}: one image would take {one / 2**30:,.1f} GiB (at most "
            f"{MAX_INPUT_BYTES // 2**30} GiB); this is not the shape the model was exported for"
        )
    if batch * one > MAX_INPUT_BYTES:  # the shape is fine: the batch asked for is too large
        raise BenchError(
            f"--batch {batch}: a batch of {batch} images of {shape} would take "
            f"{batch * one / 2**30:,.1f} GiB (at most {MAX_INPUT_BYTES // 2**30} GiB); "
            "use a smaller --batch"
        )
    return tuple(shape)


def _runtime_plan(
    runtime: str,
    mode: str,
    runs: int | None,
    seconds: float | None,
    warmup: int | None,
    warmup_seconds: float | None,
) -> Plan:
    """The timing plan, refused in one line unless ``runtime`` can run it.

    "torch" is refused with a pointer to onnxruntime (an artifact holds no
    torch module, and this path must not need torch); TensorRT has no
    throughput mode.
    """
    if runtime == "torch":
        raise BenchError(TORCH_REFUSAL)
    if runtime not in RUNTIME_NAMES:
        raise BenchError(f"unknown runtime '{runtime}': expected one of {list(RUNTIME_NAMES)}")
    how = plan(mode, runs, seconds, warmup, warmup_seconds)
    if runtime == "trt" and how.mode == "throughput":
        raise BenchError("--mode throughput is not available for TensorRT; use --mode latency")
    return how


def _add_transfer(results: list[dict[str, Any]], per_transfer: float | None) -> None:
    """Give each row its per-image edge latency plus the uplink transfer (when an uplink
    speed was given), and drop the unrounded p50 the rows carried for it."""
    for row in results:
        if per_transfer is not None:
            row["edge_plus_transfer_ms"] = round(row.pop("_p50") / row["batch"] + per_transfer, 4)
        row.pop("_p50", None)


def _what_was_timed(
    manifest: dict[str, Any],
    input_shape: tuple[int, ...],
    edge_files: list[str],
    runtime: str,
    ov_precision_hint: str | None,
    sent: int,
) -> dict[str, Any]:
    """The report's description of the artifact timed, from its verified manifest.

    Split, target, precision, the files the runtime loaded and their bytes,
    the edge's size and what it sends per image: a report read alone says
    which model its numbers belong to. Keys in the report's order.
    """
    files = manifest["files"]
    return {
        "split": manifest["split"],
        "target": manifest["target"],
        "precision": manifest["precision"],
        "input_shape": list(input_shape),
        "ov_precision_hint": ov_precision_hint if runtime == "openvino" else None,
        "edge_files": edge_files,
        "edge_file_bytes": sum(int(files[f]["bytes"]) for f in edge_files if f in files),
        "artifact_bytes": sum(int(e["bytes"]) for e in files.values()),
        "edge_params": manifest["edge"].get("params"),
        "edge_macs": manifest["edge"].get("macs"),
        "weight_bytes": manifest["edge"].get("weight_bytes"),
        "bytes_sent_per_image": sent,
        "uplink_bits_max": (manifest.get("uplink") or {}).get("uplink_bits_max"),
    }


def bench(
    artifact_dir: Path | str,
    runtime: str = "onnxruntime",
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    warmup: int | None = None,
    runs: int | None = None,
    uplink_mbps: float | None = None,
    json_path: Path | str | None = None,
    ov_precision_hint: str | None = "f32",
    force: bool = False,
    seconds: float | None = None,
    warmup_seconds: float | None = None,
    mode: str = "latency",
) -> dict[str, Any]:
    """Time the edge partition in ``artifact_dir`` and return (and optionally write) the report.

    Budgets: ``seconds`` (default ``DEFAULT_SECONDS`` when ``runs`` is not
    given either) or ``runs`` timed calls; ``warmup_seconds`` (default
    ``DEFAULT_WARMUP_SECONDS``) or ``warmup`` untimed calls; a pair given
    together is refused. ``mode`` is ``latency`` (one request at a time) or
    ``throughput`` (several in flight; not for TensorRT).

    An existing ``json_path`` is refused unless ``force`` (before anything is
    timed: an earlier measurement is not lost silently).

    ``runtime`` is onnxruntime (edge.onnx), openvino (edge.xml, else edge.onnx)
    or trt (edge.engine). "torch" is refused with a pointer to onnxruntime: an
    artifact holds no torch module, and this path must not need torch.
    """
    how = _runtime_plan(runtime, mode, runs, seconds, warmup, warmup_seconds)
    _validate(batches, threads, uplink_mbps)
    check_ov_hint(ov_precision_hint)
    if json_path is not None:
        check_json_path(Path(json_path), force)
    root = Path(artifact_dir)
    manifest = verify_manifest(root)
    backend = RUNTIMES[runtime]
    module = backend.load()  # imported before any memory baseline
    input_shape = _input_shape(manifest["input_shape"], root, max(batches))
    sent = int(manifest["edge"]["bytes_sent"])
    per_transfer = transfer_ms(sent, uplink_mbps) if uplink_mbps else None
    # Runtimes load only files the manifest lists, i.e. whose sha256 was just checked.
    options: dict[str, Any] = {
        "ov_precision_hint": ov_precision_hint,
        "verified": frozenset(manifest["files"]),
        "mode": how.mode,
    }

    with staged_copy(root, manifest) as stage:
        options["stage"] = stage
        results, rss_method, edge_files = _time_batches(
            backend, module, root, input_shape, batches, threads, how, options
        )
    _add_transfer(results, per_transfer)
    report: dict[str, Any] = {
        "artifact_dir": str(root),
        "runtime": runtime,
        "runtime_version": runtime_version(module),
        "threads": threads,
        "mode": how.mode,
        "seconds": how.timed.seconds,
        "runs": how.timed.calls,
        "warmup": how.warmup.calls,
        "warmup_seconds": how.warmup.seconds,
        "timer": TIMER[runtime if how.mode == "latency" else f"{runtime}-throughput"],
        **_what_was_timed(manifest, input_shape, edge_files, runtime, ov_precision_hint, sent),
        "uplink_mbps": uplink_mbps,
        "transfer_ms_per_image": round(per_transfer, 4) if per_transfer is not None else None,
        "rss_method": rss_method,
        "results": results,
        "machine": machine_info(),
        "versions": package_versions(),
    }
    if json_path is not None:
        write_json(json_path, report)
    return report
