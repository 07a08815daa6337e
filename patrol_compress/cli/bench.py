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


def render(report: dict[str, Any]) -> Table:
    title = (
        f"{report['runtime']} {report['runtime_version']} | split {report['split']} "
        f"{report['precision']} | {report['bytes_sent_per_image']} B sent/image"
    )
    table = Table(title=title)
    for column in ("batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS MB"):
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
        warmup: int = typer.Option(10, "--warmup", help="Untimed calls per batch size."),
        runs: int = typer.Option(50, "--runs", help="Timed calls per batch size."),
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
