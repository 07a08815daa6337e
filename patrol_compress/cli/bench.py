"""``patrol-compress bench ARTIFACT_DIR``: time an exported edge partition on this device.

Imports only torch-free modules (``patrol_compress.bench``), so it runs on an
edge device with numpy and one runtime installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from patrol_compress.bench import RUNTIME_NAMES, BenchError, bench
from patrol_compress.bench.timing import DEFAULT_SECONDS, DEFAULT_WARMUP_SECONDS, MODES
from patrol_compress.cli.common import (
    check_threads,
    check_utf8_path,
    choice_option,
    console,
    user_errors,
)


def parse_batches(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; anything else is a one-line user error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchError(
            f"--batch expects comma-separated integers like 1,8; found {text!r}"
        ) from None
    if not values:
        raise BenchError(f"--batch expects comma-separated integers like 1,8; found {text!r}")
    return values


def _budget(report: dict[str, Any]) -> str:
    timed = f"{report['seconds']} s" if report["runs"] is None else f"{report['runs']} calls"
    warm = (
        f"{report['warmup_seconds']} s" if report["warmup"] is None else f"{report['warmup']} calls"
    )
    return f"{timed} timed after {warm} warm-up per batch"


def render(report: dict[str, Any]) -> Table:
    title = (
        f"{report['runtime']} {report['runtime_version']} | split {report['split']} "
        f"{report['precision']} | {report['bytes_sent_per_image']} B sent/image | "
        f"{report['mode']} mode, {_budget(report)}"
    )
    table = Table(title=title)
    for column in ("batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "calls", "peak RSS MB"):
        table.add_column(column, justify="right")
    with_uplink = report.get("transfer_ms_per_image") is not None
    if with_uplink:
        table.add_column("edge+uplink ms/img", justify="right")
    for row in report["results"]:
        cells = [
            str(row["batch"]),
            f"{row['p50_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['throughput']:.1f}",
            f"{row['calls']}" + (f" ({row['streams']} streams)" if row["streams"] > 1 else ""),
            "-" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.1f}",
        ]
        if with_uplink:
            cells.append(f"{row['edge_plus_transfer_ms']:.3f}")
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    @app.command("bench")
    @user_errors
    def bench_command(
        artifact_dir: Path = typer.Argument(..., help="An export folder (with manifest.json)."),
        runtime: str = choice_option(
            "onnxruntime", "--runtime", RUNTIME_NAMES, "Runtime that runs the edge partition."
        ),
        batch: str = typer.Option("1,8", "--batch", help="Comma-separated batch sizes."),
        threads: int | None = typer.Option(
            None, "--threads", help="Runtime threads (default: runtime's)."
        ),
        seconds: float | None = typer.Option(
            None,
            "--seconds",
            help=f"Timed seconds per batch size, as benchmark_app -t (default {DEFAULT_SECONDS:g} "
            "unless --runs is given).",
        ),
        runs: int | None = typer.Option(
            None, "--runs", help="Timed calls per batch size instead of --seconds."
        ),
        warmup_seconds: float | None = typer.Option(
            None,
            "--warmup-seconds",
            help=f"Untimed seconds per batch size (default {DEFAULT_WARMUP_SECONDS:g} unless "
            "--warmup is given).",
        ),
        warmup: int | None = typer.Option(
            None, "--warmup", help="Untimed calls per batch size instead of --warmup-seconds."
        ),
        mode: str = choice_option(
            "latency",
            "--mode",
            MODES,
            "latency: one request at a time; throughput: several in flight, images/s.",
        ),
        uplink_mbps: float | None = typer.Option(
            None, "--uplink-mbps", help="Uplink bandwidth; adds transfer and end-to-end estimates."
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write the full report here."),
        ov_hint: str = typer.Option(
            "f32", "--ov-precision-hint", help="OpenVINO INFERENCE_PRECISION_HINT ('' for default)."
        ),
        force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    ) -> None:
        """Verify an export's checksums, then time its edge partition per batch size."""
        check_threads(threads)
        check_utf8_path(json_path, "--json")
        report = bench(
            artifact_dir,
            runtime=runtime,
            batches=parse_batches(batch),
            threads=threads,
            warmup=warmup,
            runs=runs,
            seconds=seconds,
            warmup_seconds=warmup_seconds,
            mode=mode,
            uplink_mbps=uplink_mbps,
            json_path=json_path,
            ov_precision_hint=ov_hint or None,
            force=force,
        )
        console.print(render(report))
        if report["transfer_ms_per_image"] is not None:
            console.print(
                f"uplink {report['uplink_mbps']} Mbit/s: {report['transfer_ms_per_image']:.3f} ms "
                "per image to send the split tensor"
            )
        if json_path is not None:
            console.print(f"wrote {json_path}", markup=False, highlight=False)
