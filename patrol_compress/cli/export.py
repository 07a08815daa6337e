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
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIBRATION_IMAGES = 300  # exporters.int8.DEFAULT_CALIBRATION_IMAGES (not imported: torch)


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


def quantization_lines(manifest: dict[str, Any]) -> list[str]:
    """What an INT8 export did to the split and to accuracy; a failed parity says so first."""
    q = manifest.get("quantization")
    if not q:
        return []
    from patrol_compress.exporters.int8 import parity_line

    parity, split = q["parity"], q["split_tensor"]
    diff = parity["max_abs_diff"]
    lines = [
        f"INT8 parity {'passed' if parity['passed'] else 'FAILED'}: {parity_line(parity)}; "
        f"max |int8 - fp32| {diff['edge_output']:.3g} on the edge output, "
        f"{diff['output']:.3g} on the cloud output ({parity['runtime']})",
        f"split tensor: {split['dtype']}, scale {split['scale']:.6g}, zero point "
        f"{split['zero_point']}; {split['bytes_sent_fp32']:,} -> "
        f"{manifest['edge']['bytes_sent']:,} bytes sent per image; calibrated on "
        f"{q['calibration'].get('images')} training images (seed {q['calibration'].get('seed')})",
    ]
    if not parity["passed"]:
        lines.insert(
            0,
            "INT8 PARITY FAILED: written only because of --allow-parity-fail; manifest.json "
            "records quantization.parity.passed = false. Do not deploy without checking it.",
        )
    return lines


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
        calibration_images: int = typer.Option(
            DEFAULT_CALIBRATION_IMAGES,
            "--calibration-images",
            help="int8: training images to calibrate on (a subset seeded by the recipe's seed).",
        ),
        allow_parity_fail: bool = typer.Option(
            False,
            "--allow-parity-fail",
            help="int8: write the artifact even if accuracy drops more than 1 point "
            "(flagged in manifest.json); by default it is an error and nothing is written.",
        ),
        trust_model_code: bool = typer.Option(
            False,
            "--trust-model-code",
            help="Import and call the model.factory the run's model.json names (a custom "
            "architecture); without it a run folder never runs code. Only for runs you trust.",
        ),
        threads: int | None = threads_option(),
    ) -> None:
        """Export a run's edge and cloud partitions, checked against torch, with a manifest.

        int8 is calibrated on the recipe's training images and must keep rank-1 /
        top-1 within 1 point of fp32 on the recipe's test set (exit code 2 otherwise).
        """
        use_threads(threads)
        check_utf8_path(out, "--out")
        from patrol_compress.exporters import export_run

        manifest = export_run(
            run,
            split,
            target,
            precision,
            out,
            force,
            opset,
            calibration_images=calibration_images,
            allow_parity_fail=allow_parity_fail,
            trust_model_code=trust_model_code,
        )
        console.print(summary(manifest, Path(manifest["out_dir"])))
        for line in quantization_lines(manifest):
            console.print(line, highlight=False, markup=False)
