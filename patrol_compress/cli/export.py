"""``patrol-compress export RUN --split K --target onnx|openvino|trt``.

Loads a run's (possibly pruned) model, exports its edge and cloud partitions
through :func:`patrol_compress.exporters.export_run` and prints what the
edge costs. torch and the exporters are imported inside the command, so the CLI
starts (and ``bench`` runs) without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from patrol_compress.cli.common import (
    check_utf8_path,
    choice_option,
    console,
    threads_option,
    use_threads,
    user_errors,
)

TARGETS = ("onnx", "openvino", "trt")
PRECISIONS = ("fp32", "fp16")


def summary(manifest: dict[str, Any], out_dir: Path) -> Table:
    table = Table(
        title=f"{manifest['target']} export, split {manifest['split']}, {manifest['precision']}"
    )
    table.add_column("partition")
    for column in ("params", "weight bytes", "MACs/img", "bytes sent/img"):
        table.add_column(column, justify="right")
    edge, cloud = manifest["edge"], manifest["cloud"]
    table.add_row(
        "edge",
        f"{edge['params']:,}",
        f"{edge['weight_bytes']:,}",
        f"{edge['macs']:,}",
        f"{edge['bytes_sent']:,}",
    )
    table.add_row(
        "cloud", f"{cloud['params']:,}", f"{cloud['weight_bytes']:,}", f"{cloud['macs']:,}", ""
    )
    table.caption = f"{out_dir} ({len(manifest['files'])} files + manifest.json)"
    return table


def register(app: typer.Typer) -> None:
    @app.command("export")
    @user_errors
    def export_command(
        run: Path = typer.Argument(..., help="Run directory with a saved model (model.json)."),
        split: int | None = typer.Option(
            None,
            "--split",
            help="Stages on the edge (default: the run recipe's export.split, else the run's).",
        ),
        target: str = choice_option(..., "--target", TARGETS, "Export format."),
        precision: str = choice_option(
            "fp32", "--precision", PRECISIONS, "Weights and activations' float type."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Output folder (default: RUN/export/<target>-split<K>-<precision>)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace the files of an existing export."
        ),
        opset: int | None = typer.Option(
            None, "--opset", help="ONNX opset (default: the run recipe's export.opset, 17)."
        ),
        threads: int | None = threads_option(),
    ) -> None:
        """Export a run's edge and cloud partitions, checked against torch, with a manifest."""
        use_threads(threads)
        check_utf8_path(out, "--out")
        from patrol_compress.exporters import export_run

        manifest = export_run(run, split, target, precision, out, force, opset)
        console.print(summary(manifest, Path(manifest["out_dir"])))
