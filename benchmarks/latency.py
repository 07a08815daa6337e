"""Edge latency of split-2, split-4 and pruned split-4 partitions on compiled runtimes.

The question: does structured pruning turn its MAC reduction into edge speed?
Three edge partitions of the same network are exported to ONNX (through the
project's exporter, so each one is parity-checked) and timed with the
project's torch-free bench code on onnxruntime and OpenVINO (f32 hint), at
batch 1 and 8 with 2 threads:

* ``split2``: stem + 2 stages, unpruned (the shallow split the budget is set by);
* ``split4``: stem + 4 stages, unpruned;
* ``split4-pruned``: stem + 4 stages, pruned. With ``--pruned-run RUN`` it is
  that run's saved model; otherwise a STAND-IN: ``--prune-ratio`` (default
  0.75) of the channels of every channel group removed by torch-pruning's L1
  magnitude criterion on random weights. The stand-in has the shapes of a
  budget-fitted PATROL model (``docs/measurements.md``, "Budgets": 75% per
  group fits split 2's parameter budget) but not its weights, which latency
  does not depend on.

Each timing is the median over ``--repeats`` repeats (variants interleaved
inside each repeat so drift hits all of them alike) of bench's median latency.
Reported next to each other: latency ratio (pruned split 4 / unpruned split 2)
and MAC ratio, and the fraction of the MAC-predicted speed-up that pruning
reached (split4 / split4-pruned latency over split4 / split4-pruned MACs).
With CUDA, torch eager on the GPU (and onnxruntime-gpu, if installed) are
timed too. Rows go to ``latency.json``, a table to ``latency.md``.

    python benchmarks/latency.py                      # ResNet-18, 256 px
    python benchmarks/latency.py --image-size 128 --repeats 3 --runs 20
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.bench import bench, machine_info
from patrol_compress.exporters import export_partitions
from patrol_compress.io import package_versions, write_json, write_text
from patrol_compress.models import BlockNet, build_model, split
from patrol_compress.recipe import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results"
CPU_RUNTIMES = ("onnxruntime", "openvino")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=None, help="default 256 (or the run's)")
    p.add_argument("--pruned-run", type=Path, default=None, help="run dir with a pruned model")
    p.add_argument("--prune-ratio", type=float, default=0.75, help="stand-in pruning per group")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runtimes", default=",".join(CPU_RUNTIMES))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not 0.0 < args.prune_ratio < 1.0:
        p.error(f"--prune-ratio must be in (0, 1), got {args.prune_ratio}")
    if args.repeats < 1 or args.runs < 1 or args.threads < 1:
        p.error("--repeats, --runs and --threads must be >= 1")
    return args


def magnitude_prune(model: BlockNet, shape: tuple[int, ...], ratio: float) -> None:
    """Remove ``ratio`` of every channel group's channels by L1 magnitude (in place)."""
    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.randn(1, *shape),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        # Only the classifier's outputs (the identities) are fixed; every channel group,
        # including layer4's residual stream feeding the head, is pruned.
        ignored_layers=[model.get_submodule("head.classifier")],
    )
    pruner.step()


def build_variants(
    args: argparse.Namespace,
) -> tuple[dict[str, tuple[BlockNet, int]], tuple[int, ...], str]:
    """{name: (model, split)}, the input shape, and how the pruned variant was made."""
    if args.pruned_run is not None:
        from patrol_compress.run import load_run_model

        pruned, info = load_run_model(args.pruned_run)
        config = ModelConfig.model_validate(info["model"])
        c, h, _ = info["input_shape"]
        size = args.image_size or h
        base = build_model(config, info["num_classes"], c, info.get("task", "reid"), size)
        source = f"pruned model of run {args.pruned_run}"
    else:
        size = args.image_size or 256
        c = 3
        config = ModelConfig(arch=args.arch, width=args.width, stem="imagenet")
        base = build_model(config, num_classes=576, image_size=size)
        pruned = build_model(config, num_classes=576, image_size=size)
        pruned.load_state_dict(base.state_dict())
        magnitude_prune(pruned.eval(), (c, size, size), args.prune_ratio)
        source = (
            f"STAND-IN: {args.prune_ratio:.0%} of every channel group removed by L1 magnitude "
            "(torch-pruning) on random weights, not a PATROL-trained model"
        )
    base.eval()
    pruned.eval()
    variants = {"split2": (base, 2), "split4": (base, 4), "split4-pruned": (pruned, 4)}
    return variants, (c, size, size), source


def time_torch_cuda(
    model: nn.Module, shape: tuple[int, ...], batch: int, args: argparse.Namespace
) -> float:
    """Median eager latency in ms on the GPU (synchronised per call)."""
    model = model.cuda().eval()
    x = torch.randn(batch, *shape, device="cuda")
    times = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(x)
        torch.cuda.synchronize()
        for _ in range(args.runs):
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_ort_gpu(
    onnx_path: Path, shape: tuple[int, ...], batch: int, args: argparse.Namespace
) -> float | None:
    import numpy as np
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(args.warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ratios(rows: list[dict[str, Any]], costs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per runtime and batch: latency and MAC ratios, and the fraction of the predicted speed-up."""
    lat = {(r["variant"], r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
    macs = {v: costs[v]["macs"] for v in costs}
    out = []
    for runtime, batch in sorted({(r["runtime"], r["batch"]) for r in rows}):
        try:
            s2, s4, s4p = (lat[(v, runtime, batch)] for v in ("split2", "split4", "split4-pruned"))
        except KeyError:
            continue
        reached = s4 / s4p
        predicted = macs["split4"] / macs["split4-pruned"]
        out.append(
            {
                "runtime": runtime,
                "batch": batch,
                "latency_ratio_pruned4_vs_split2": round(s4p / s2, 3),
                "mac_ratio_pruned4_vs_split2": round(macs["split4-pruned"] / macs["split2"], 3),
                "speedup_reached": round(reached, 2),
                "speedup_mac_predicted": round(predicted, 2),
                "fraction_of_predicted": round(reached / predicted, 3),
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Edge latency: split 2 vs split 4 vs pruned split 4",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['usable_cpus']} usable CPUs, "
        f"{report['machine']['platform']}"
        + (f"; GPU {report['gpu']}" if report.get("gpu") else ""),
        "",
        f"Pruned variant: {report['pruned_source']}",
        "",
        f"Input {report['input_shape']}, {report['threads']} threads, "
        f"median of {report['repeats']} repeats of the median of {report['runs']} runs "
        f"(after {report['warmup']} warm-up calls).",
        f"Load average (1/5/15 min) at start {report['load_average_1_5_15']['start']}, "
        f"at end {report['load_average_1_5_15']['end']}: other processes share these cores.",
        "",
        "| variant | params | MACs/img | bytes sent/img | runtime | batch | p50 ms | ms/img |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        c = report["variants"][r["variant"]]
        lines.append(
            f"| {r['variant']} | {c['params']:,} | {c['macs'] / 1e9:.3f} G | {c['bytes_sent']:,} | "
            f"{r['runtime']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p50_ms'] / r['batch']:.3f} |"
        )
    lines += [
        "",
        "| runtime | batch | latency ratio (pruned 4 / split 2) | MAC ratio | speed-up reached | "
        "MAC-predicted | fraction |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in report["ratios"]:
        lines.append(
            f"| {q['runtime']} | {q['batch']} | {q['latency_ratio_pruned4_vs_split2']:.3f} | "
            f"{q['mac_ratio_pruned4_vs_split2']:.3f} | {q['speedup_reached']:.2f}x | "
            f"{q['speedup_mac_predicted']:.2f}x | {q['fraction_of_predicted']:.3f} |"
        )
    if report["failures"]:
        lines += ["", "Failures:", *(f"- {f}" for f in report["failures"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    torch.manual_seed(0)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    variants, shape, source = build_variants(args)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    costs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="patrol-latency-") as tmp:
        dirs: dict[str, Path] = {}
        for name, (model, k) in variants.items():
            dirs[name] = Path(tmp) / name
            manifest = export_partitions(model, k, dirs[name], "onnx", "fp32", shape)
            costs[name] = {
                "split": k,
                **{key: manifest["edge"][key] for key in ("params", "macs", "bytes_sent")},
            }
            print(f"exported {name}: {costs[name]}", flush=True)
        samples: dict[tuple[str, str, int], list[float]] = {}
        for rep in range(args.repeats):
            for runtime in runtimes:
                for name in variants:
                    try:
                        result = bench(
                            dirs[name], runtime, batches, args.threads, args.warmup, args.runs
                        )
                    except Exception as exc:  # one failing runtime must not lose the other rows
                        failures.append(f"{name} on {runtime}: {type(exc).__name__}: {exc}")
                        continue
                    for row in result["results"]:
                        samples.setdefault((name, runtime, row["batch"]), []).append(row["p50_ms"])
            print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
        gpu = None
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            for name, (model, k) in variants.items():
                edge, _ = split(model, k)
                for batch in batches:
                    samples[(name, "torch-cuda", batch)] = [
                        time_torch_cuda(edge, shape, batch, args)
                    ]
                    ort_ms = time_ort_gpu(dirs[name] / "edge.onnx", shape, batch, args)
                    if ort_ms is not None:
                        samples[(name, "onnxruntime-gpu", batch)] = [ort_ms]
    for (name, runtime, batch), values in samples.items():
        p50 = statistics.median(values)
        rows.append(
            {
                "variant": name,
                **costs[name],
                "runtime": runtime,
                "batch": batch,
                "threads": args.threads if runtime in CPU_RUNTIMES else None,
                "p50_ms": round(p50, 4),
                "p50_ms_repeats": [round(v, 4) for v in values],
                "throughput": round(batch / (p50 / 1e3), 2),
            }
        )
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "input_shape": list(shape),
        "threads": args.threads,
        "warmup": args.warmup,
        "runs": args.runs,
        "repeats": args.repeats,
        "pruned_source": source,
        "variants": costs,
        "rows": rows,
        "ratios": ratios(rows, costs),
        "failures": failures,
        "gpu": gpu,
        "load_average_1_5_15": {
            "start": load_start,
            "end": os.getloadavg() if load_start else None,
        },
        "machine": machine_info(),
        "versions": package_versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latency.json", report)
    write_text(args.out / "latency.md", markdown(report))
    print(markdown(report))
    return 1 if failures and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
