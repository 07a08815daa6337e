"""Edge latency of PATROL's own pruned edges against the unpruned split 2 they replace.

The question: does a pruned split-4 edge run faster than the unpruned split-2
edge whose budget it was fitted into, on the runtimes a camera or gateway runs?
Every variant is exported to ONNX through the project's exporter (so each is
parity-checked) and timed with ``patrol-compress bench``'s code (time budgets,
``--seconds`` per batch size after ``--warmup-seconds``) on onnxruntime and
OpenVINO (f32 hint), at batch 1 and 8:

* ``split2`` / ``split4``: the unpruned target of the first ``--pruned-run``,
  cut after 2 and 4 stages;
* one variant per ``--pruned-run [LABEL=]RUN``: that run's pruned model at its
  split (all runs at the same input size; give several to compare budgets or
  ``round_to``). Each row says the run's budget, round_to and accuracy.
* without ``--pruned-run``: a STAND-IN, ``--prune-ratio`` (default 0.75) of every
  channel group removed by torch-pruning's L1 criterion on random weights; it
  met the latency goal while PATROL's own edges did not (a parameter budget
  keeps PATROL's early, high-resolution channels), so it only shows what
  uniform pruning could reach.

Each timing is the median over ``--repeats`` repeats (variants interleaved
inside each repeat so drift hits all of them alike) of bench's p50. Reported
per pruned variant: latency ratio against unpruned split 2 beside the MAC
ratio, whether it meets ``--goal`` (0.8), and the fraction of the MAC-predicted
speed-up over split 4 that pruning reached. With CUDA, torch eager on the GPU
(and onnxruntime-gpu, if installed) are timed too. Output:
``<--name>.json`` / ``.md`` in ``--out``.

    python benchmarks/latency.py --pruned-run params=runs/quickstart \\
        --pruned-run latency=runs/quickstart_latency --threads 1 --name latency_64px
    python benchmarks/latency.py --image-size 128          # the stand-in
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
from patrol_compress.errors import PatrolError
from patrol_compress.exporters import export_partitions, export_run
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
    p.add_argument(
        "--pruned-run",
        action="append",
        default=[],
        metavar="[LABEL=]RUN",
        help="a prune run whose pruned model is timed (repeatable; all at one input size)",
    )
    p.add_argument("--prune-ratio", type=float, default=0.75, help="stand-in pruning per group")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per batch size")
    p.add_argument("--warmup-seconds", type=float, default=0.5)
    p.add_argument("--name", default="latency", help="output stem in --out")
    p.add_argument("--goal", type=float, default=0.8, help="latency ratio goal vs split 2")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also export each --pruned-run at INT8 (export_run: ONNX QDQ for onnxruntime, "
        "NNCF IR for OpenVINO, accuracy parity enforced) and time it beside its fp32 edge",
    )
    p.add_argument("--calibration-images", type=int, default=300)
    p.add_argument(
        "--allow-parity-fail",
        action="store_true",
        help="time INT8 edges that failed the accuracy parity too (marked FAILED)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runtimes", default=",".join(CPU_RUNTIMES))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not 0.0 < args.prune_ratio < 1.0:
        p.error(f"--prune-ratio must be in (0, 1), got {args.prune_ratio}")
    if args.repeats < 1 or args.threads < 1 or args.seconds <= 0 or args.warmup_seconds < 0:
        p.error("--repeats and --threads must be >= 1, --seconds > 0, --warmup-seconds >= 0")
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


def _parse_run(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    return (label, Path(path)) if sep else (Path(spec).name, Path(spec))


def build_variants(
    args: argparse.Namespace,
) -> tuple[dict[str, tuple[BlockNet, int]], tuple[int, ...], dict[str, dict[str, Any]]]:
    """{name: (model, split)}, the input shape, and per pruned variant where it came from.

    With ``--pruned-run``: split 2 and split 4 of the first run's trained target
    (unpruned), then each run's pruned model at its split. Otherwise the
    stand-in described in the module docstring.
    """
    if args.pruned_run:
        from patrol_compress.io import read_json
        from patrol_compress.models.saved import load_run_model

        runs = [_parse_run(spec) for spec in args.pruned_run]
        target, info = load_run_model(runs[0][1] / "target")
        c, h, _ = info["input_shape"]
        variants: dict[str, tuple[BlockNet, int]] = {"split2": (target, 2), "split4": (target, 4)}
        sources: dict[str, dict[str, Any]] = {}
        for label, run in runs:
            pruned, pinfo = load_run_model(run)
            if list(pinfo["input_shape"]) != [c, h, h]:
                raise SystemExit(f"--pruned-run {run}: input {pinfo['input_shape']} != {[c, h, h]}")
            metrics = read_json(run / "metrics.json")
            variants[label] = (pruned.eval(), int(metrics["split"]))
            sources[label] = {
                "run": str(run),
                "recipe": pinfo.get("recipe_name", run.name),
                "budget": metrics.get("budget"),
                "round_to": metrics.get("removal", {}).get("round_to", 1),
                "accuracy_before": metrics["accuracy"]["before"],
                "accuracy_after": metrics["accuracy"]["after"],
                "planned_latency_ms": metrics.get("removal", {}).get("latency_ms"),
            }
        target.eval()
        return variants, (c, h, h), sources
    size = args.image_size or 256
    c = 3
    config = ModelConfig(arch=args.arch, width=args.width, stem="imagenet")
    base = build_model(config, num_classes=576, image_size=size)
    pruned = build_model(config, num_classes=576, image_size=size)
    pruned.load_state_dict(base.state_dict())
    magnitude_prune(pruned.eval(), (c, size, size), args.prune_ratio)
    source = {
        "stand_in": f"{args.prune_ratio:.0%} of every channel group removed by L1 magnitude "
        "(torch-pruning) on random weights, not a PATROL-trained model"
    }
    base.eval()
    variants = {"split2": (base, 2), "split4": (base, 4), "split4-pruned": (pruned.eval(), 4)}
    return variants, (c, size, size), {"split4-pruned": source}


def time_torch_cuda(
    model: nn.Module, shape: tuple[int, ...], batch: int, args: argparse.Namespace
) -> float:
    """Median eager latency in ms on the GPU (synchronised per call)."""
    model = model.cuda().eval()
    x = torch.randn(batch, *shape, device="cuda")
    times: list[float] = []
    with torch.no_grad():
        end = time.perf_counter() + args.warmup_seconds
        while time.perf_counter() < end:
            model(x)
        torch.cuda.synchronize()
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end or not times:
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
    end = time.perf_counter() + args.warmup_seconds
    while time.perf_counter() < end:
        session.run(None, {name: x})
    times: list[float] = []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end or not times:
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ratios(
    rows: list[dict[str, Any]], costs: dict[str, dict[str, Any]], goal: float
) -> list[dict[str, Any]]:
    """Per pruned variant, runtime and batch: latency and MAC ratios against unpruned split 2,
    and the fraction of the MAC-predicted speed-up over unpruned split 4 that pruning reached."""
    lat = {(r["variant"], r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
    macs = {v: costs[v]["macs"] for v in costs}
    out = []
    for name in [v for v in costs if v not in ("split2", "split4")]:
        for runtime, batch in sorted({(r["runtime"], r["batch"]) for r in rows}):
            try:
                s2, s4, sp = (lat[(v, runtime, batch)] for v in ("split2", "split4", name))
            except KeyError:
                continue
            reached = s4 / sp
            predicted = macs["split4"] / macs[name]
            out.append(
                {
                    "variant": name,
                    "runtime": runtime,
                    "batch": batch,
                    "latency_ratio_vs_split2": round(sp / s2, 3),
                    "mac_ratio_vs_split2": round(macs[name] / macs["split2"], 3),
                    "meets_goal": sp / s2 <= goal,
                    "speedup_reached": round(reached, 2),
                    "speedup_mac_predicted": round(predicted, 2),
                    "fraction_of_predicted": round(reached / predicted, 3),
                }
            )
    return out


def int8_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per INT8 variant, runtime and batch: INT8 latency over its own fp32 edge's."""
    lat = {(r["variant"], r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
    out = []
    for (name, runtime, batch), ms in sorted(lat.items()):
        if not name.endswith("-int8") or (name[:-5], runtime, batch) not in lat:
            continue
        fp32 = lat[(name[:-5], runtime, batch)]
        out.append(
            {
                "variant": name[:-5],
                "runtime": runtime,
                "batch": batch,
                "fp32_ms": fp32,
                "int8_ms": ms,
                "int8_over_fp32": round(ms / fp32, 3),
            }
        )
    return out


def _accuracy(acc: dict[str, float]) -> str:
    key = "rank1" if "rank1" in acc else next(iter(acc))
    return f"{key} {acc[key] * 100:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Edge latency: unpruned split 2 and 4 against pruned split-4 edges",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['usable_cpus']} usable CPUs, "
        f"{report['machine']['platform']}"
        + (f"; GPU {report['gpu']}" if report.get("gpu") else ""),
        "",
        f"Input {report['input_shape']}, {report['threads']} thread(s), bench's p50 over "
        f"{report['seconds']} s per batch size after {report['warmup_seconds']} s of warm-up, "
        f"median of {report['repeats']} repeats (variants interleaved in each).",
        f"Load average (1/5/15 min) at start {report['load_average_1_5_15']['start']}, "
        f"at end {report['load_average_1_5_15']['end']}: other processes share these cores.",
        "",
        "Pruned variants:",
    ]
    for name, src in report["pruned_sources"].items():
        if "stand_in" in src:
            lines.append(f"- `{name}`: STAND-IN: {src['stand_in']}")
            continue
        lines.append(
            f"- `{name}`: run `{src['run']}`, budget {src['budget']}, round_to {src['round_to']}, "
            f"{_accuracy(src['accuracy_before'])} -> {_accuracy(src['accuracy_after'])}"
            + (
                f", latency measured while planning {src['planned_latency_ms']:.3f} ms"
                if src.get("planned_latency_ms") is not None
                else ""
            )
        )
    lines += [
        "",
        "| variant | params | MACs/img | bytes sent/img | runtime | batch | p50 ms | ms/img |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        c = report["variants"][r["variant"]]
        lines.append(
            f"| {r['variant']} | {c['params']:,} | {c['macs'] / 1e9:.4f} G | {c['bytes_sent']:,} | "
            f"{r['runtime']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p50_ms'] / r['batch']:.3f} |"
        )
    lines += [
        "",
        f"| variant | runtime | batch | latency ratio vs split 2 | MAC ratio "
        f"| <= {report['goal']} | speed-up over split 4 | MAC-predicted | fraction |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for q in report["ratios"]:
        lines.append(
            f"| {q['variant']} | {q['runtime']} | {q['batch']} | "
            f"{q['latency_ratio_vs_split2']:.3f} | {q['mac_ratio_vs_split2']:.3f} | "
            f"{'yes' if q['meets_goal'] else 'NO'} | {q['speedup_reached']:.2f}x | "
            f"{q['speedup_mac_predicted']:.2f}x | {q['fraction_of_predicted']:.3f} |"
        )
    if report.get("int8_ratios"):
        lines += [
            "",
            "INT8 (the run exported with `--precision int8`) against the same edge in fp32:",
            "",
        ]
        for name, src in report["pruned_sources"].items():
            for runtime, q in src.get("int8", {}).items():
                if "error" in q:
                    lines.append(f"- `{name}` on {runtime}: not exported: {q['error']}")
                    continue
                par = q["parity"]
                lines.append(
                    f"- `{name}` on {runtime} ({q['tool']}): {par['metric']} "
                    f"{100 * par['fp32']:.1f}% fp32 -> {100 * par['int8']:.1f}% int8 "
                    f"({'passed' if par['passed'] else 'FAILED'} the 1-point parity)"
                )
        lines += [
            "",
            "| variant | runtime | batch | fp32 p50 ms | int8 p50 ms | int8 / fp32 |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for q in report["int8_ratios"]:
            lines.append(
                f"| {q['variant']} | {q['runtime']} | {q['batch']} | {q['fp32_ms']:.3f} | "
                f"{q['int8_ms']:.3f} | {q['int8_over_fp32']:.3f} |"
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
    variants, shape, sources = build_variants(args)
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
        int8_dirs: dict[tuple[str, str], Path] = {}
        if args.int8:
            for name, src in sources.items():
                if "run" not in src:
                    continue
                for runtime, target in (("onnxruntime", "onnx"), ("openvino", "openvino")):
                    if runtime not in runtimes:
                        continue
                    out = Path(tmp) / f"{name}-int8-{target}"
                    try:
                        manifest = export_run(
                            src["run"],
                            target=target,
                            precision="int8",
                            out=out,
                            calibration_images=args.calibration_images,
                            allow_parity_fail=args.allow_parity_fail,
                        )
                    except PatrolError as exc:  # a failed parity is a result, not a crash
                        failures.append(f"{name} int8 for {runtime}: {exc}")
                        src.setdefault("int8", {})[runtime] = {"error": str(exc)}
                        continue
                    int8_dirs[(f"{name}-int8", runtime)] = out
                    quant = manifest["quantization"]
                    costs[f"{name}-int8"] = {
                        **costs[name],
                        "bytes_sent": manifest["edge"]["bytes_sent"],
                    }
                    src.setdefault("int8", {})[runtime] = {
                        "tool": quant["tool"],
                        "parity": quant["parity"],
                    }
                    print(f"exported {name} int8 for {runtime}: {quant['parity']}", flush=True)
        samples: dict[tuple[str, str, int], list[float]] = {}
        for rep in range(args.repeats):
            for runtime in runtimes:
                timed = [(n, dirs[n]) for n in variants] + [
                    (n, d) for (n, r), d in int8_dirs.items() if r == runtime
                ]
                for name, folder in timed:
                    try:
                        result = bench(
                            folder,
                            runtime,
                            batches,
                            args.threads,
                            seconds=args.seconds,
                            warmup_seconds=args.warmup_seconds,
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
    fp32_costs = {k: v for k, v in costs.items() if not k.endswith("-int8")}
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "input_shape": list(shape),
        "threads": args.threads,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "repeats": args.repeats,
        "goal": args.goal,
        "pruned_sources": sources,
        "variants": costs,
        "rows": rows,
        "ratios": ratios(rows, fp32_costs, args.goal),
        "int8_ratios": int8_ratios(rows),
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
    write_json(args.out / f"{args.name}.json", report)
    write_text(args.out / f"{args.name}.md", markdown(report))
    print(markdown(report))
    return 1 if failures and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
