"""``patrol-compress attack RUN``: model inversion attacks on the run's edge partition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from patrol_compress.cli.common import (
    ATTACK_RESUMABLE,
    check_utf8_path,
    console,
    threads_option,
    use_threads,
    with_user_errors,
)
from patrol_compress.contracts import ATTACK_FILE, ATTACK_GRID

ATTACK = typer.Option(
    "blackbox,whitebox,adaptive",
    "--attack",
    help="Comma-separated attacks to run (blackbox, whitebox, adaptive, informed).",
)
SPLIT = typer.Option(None, "--split", help="Split point K (default: the run's split).")
CONFIG = typer.Option(
    None, "--config", help="Attack settings YAML (AttackConfig); default: built-in."
)
OUT = typer.Option(None, "--out", help="Folder for attack.json and attack_grid.png (default: RUN).")
LABEL = typer.Option(
    None, "--label", help="Name of this point in reports (default: e.g. 'PATROL split 4')."
)
FORCE = typer.Option(False, "--force", help="Replace an existing attack.json in the output folder.")
RESUME = typer.Option(
    False,
    "--resume",
    help="Continue an interrupted attack into the same output folder: the decoder families "
    "and white-box starts it finished are kept.",
)
ARTIFACT = typer.Option(
    None,
    "--artifact",
    help="Export folder the adaptive attack queries, e.g. RUN/export/onnx-split4-int8 "
    "(default: the config's adaptive.artifact, else RUN/export/onnx-split<K>-fp32).",
)

TRUST = typer.Option(
    False,
    "--trust-model-code",
    help="Import and call the model.factory the run's model.json names (a custom "
    "architecture); without it a run folder never runs code. Only for runs you trust.",
)


def register(app: typer.Typer) -> None:
    @app.command()
    @with_user_errors(ATTACK_RESUMABLE)
    def attack(
        run: Path = typer.Argument(..., help="Run directory (or its target/ sub-folder)."),
        attacks: str = ATTACK,
        split: int | None = SPLIT,
        config: Path | None = CONFIG,
        out: Path | None = OUT,
        label: str | None = LABEL,
        force: bool = FORCE,
        artifact: Path | None = ARTIFACT,
        trust_model_code: bool = TRUST,
        resume: bool = RESUME,
        threads: int | None = threads_option(),
    ) -> None:
        """Reconstruct images from the edge's features; report PSNR, SSIM and attack accuracy."""
        use_threads(threads)
        check_utf8_path(out, "--out")
        from patrol_compress.api import attack as run_attacks

        names = [a.strip() for a in attacks.split(",") if a.strip()]
        report = run_attacks(
            run,
            names,
            split,
            config,
            out,
            label,
            force=force,
            artifact=artifact,
            trust_model_code=trust_model_code,
            resume=resume,
        )
        _print(report, out if out is not None else run)


def _print(report: dict[str, Any], folder: Path) -> None:
    from rich.table import Table

    table = Table(title=f"inversion attacks at split {report['split']} (higher = more leakage)")
    for col in ("attack", "images", "PSNR dB", "SSIM", "MSE", "attack acc", "region PSNR", "s"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    rows = [(_attack_name(n, m), m) for n, m in report["attacks"].items()]
    rows.append(("floor: mean image", report["mean_image"]))
    if "label_only" in report:
        rows.append(("floor: label only", report["label_only"]))
    if report.get("label_only_mix"):
        rows.append(("floor: label only, mix loss", report["label_only_mix"]))
    for name, m in rows:
        region = m.get("region", {}).get("psnr")
        table.add_row(
            name,
            str(m.get("image_set", {}).get("images", report["data"]["eval_images"])),
            f"{m['psnr']:.2f}",
            f"{m['ssim']:.3f}",
            f"{m['mse']:.4f}",
            "-" if "attack_accuracy" not in m else f"{m['attack_accuracy']:.1%}",
            "-" if region is None else f"{region:.2f}",
            "-" if "seconds" not in m else f"{m['seconds']:.0f}",
        )
    console.print(table)
    if report.get("attack_failed"):
        console.print(
            "ATTACK FAILED: no attack beat the floors (mean image, label only); these numbers "
            "measure a weak attacker, not privacy. Train it longer or with more images.",
            highlight=False,
            markup=False,
        )
    rec = report["recogniser"]
    console.print(
        f"recogniser on clean images: {rec['clean_accuracy']:.1%} (chance {rec['chance']:.1%}); "
        f"wrote {folder / ATTACK_FILE} and {folder / ATTACK_GRID}",
        highlight=False,
    )


def _attack_name(name: str, m: dict[str, Any]) -> str:
    """'blackbox (upsample)', with a mark where the attack did not beat the floors."""
    family = m.get("info", {}).get("family")
    text = name if family is None else f"{name} ({family})"
    return text if m.get("converged", True) else f"{text} [failed]"
