"""``patrol-compress attack RUN``: model inversion attacks on the run's edge partition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from patrol_compress.cli.common import console, user_errors

ATTACK = typer.Option(
    "blackbox,whitebox,adaptive",
    "--attack",
    help="Comma-separated attacks to run (blackbox, whitebox, adaptive).",
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


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def attack(
        run: Path = typer.Argument(..., help="Run directory (or its target/ sub-folder)."),
        attacks: str = ATTACK,
        split: int | None = SPLIT,
        config: Path | None = CONFIG,
        out: Path | None = OUT,
        label: str | None = LABEL,
        force: bool = FORCE,
    ) -> None:
        """Reconstruct images from the edge's features; report PSNR, SSIM and attack accuracy."""
        from patrol_compress.api import attack as run_attacks

        names = [a.strip() for a in attacks.split(",") if a.strip()]
        report = run_attacks(run, names, split, config, out, label, force=force)
        _print(report, out if out is not None else run)


def _print(report: dict[str, Any], folder: Path) -> None:
    from rich.table import Table

    table = Table(title=f"inversion attacks at split {report['split']} (higher = more leakage)")
    for col in ("attack", "images", "PSNR dB", "SSIM", "MSE", "attack acc", "region PSNR", "s"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    rows = [*report["attacks"].items(), ("mean image", report["mean_image"])]
    for name, m in rows:
        region = m.get("region", {}).get("psnr")
        table.add_row(
            name,
            str(m.get("images", report["data"]["eval_images"])),
            f"{m['psnr']:.2f}",
            f"{m['ssim']:.3f}",
            f"{m['mse']:.4f}",
            "-" if "attack_accuracy" not in m else f"{m['attack_accuracy']:.1%}",
            "-" if region is None else f"{region:.2f}",
            "-" if "seconds" not in m else f"{m['seconds']:.0f}",
        )
    console.print(table)
    rec = report["recogniser"]
    console.print(
        f"recogniser on clean images: {rec['clean_accuracy']:.1%} (chance {rec['chance']:.1%}); "
        f"wrote {folder / 'attack.json'} and {folder / 'attack_grid.png'}",
        highlight=False,
    )
