"""``patrol-compress defend RUN``: the baseline defenses' sweeps, attacked like PATROL."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import (
    check_utf8_path,
    console,
    threads_option,
    use_threads,
    with_user_errors,
)
from patrol_compress.contracts import DEFENSES_FILE

DEFENSE = typer.Option(
    None,
    "--defense",
    help="Comma-separated defenses (noise, dropout, skip, app); default: the recipe's sweeps.",
)
STRENGTHS = typer.Option(
    None, "--strengths", help="Comma-separated strengths replacing every chosen sweep's own."
)
SPLIT = typer.Option(
    None, "--split", help="Split to defend (default: defenses.split, else budget.fit_split)."
)
ATTACK = typer.Option(None, "--attack", help="Comma-separated attacks (default: the recipe's).")
CONFIG = typer.Option(
    None,
    "--config",
    help="Attack settings YAML, as for attack --config (default: the recipe's attack: section).",
)
OUT = typer.Option(None, "--out", help="Folder for the points (default: RUN/defenses).")
FORCE = typer.Option(False, "--force", help="Recompute points whose attack.json exists.")
NO_BASELINE = typer.Option(
    False, "--no-undefended", help="Skip the undefended point at the same split."
)

TRUST = typer.Option(
    False,
    "--trust-model-code",
    help="Import and call the model.factory the run's model.json names (a custom "
    "architecture); without it a run folder never runs code. Only for runs you trust.",
)


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, found '{text}'") from None


def register(app: typer.Typer) -> None:
    @app.command()
    @with_user_errors(
        "finished points are kept; rerun the same command (without --force) for the rest"
    )
    def defend(
        run: Path = typer.Argument(..., help="Prune run (its target/ is defended) or train run."),
        defense: str | None = DEFENSE,
        strengths: str | None = STRENGTHS,
        split: int | None = SPLIT,
        attack: str | None = ATTACK,
        out: Path | None = OUT,
        force: bool = FORCE,
        no_undefended: bool = NO_BASELINE,
        config: Path | None = CONFIG,
        trust_model_code: bool = TRUST,
        threads: int | None = threads_option(),
    ) -> None:
        """Evaluate noise/dropout/skip/APP strength sweeps: accuracy and attack PSNR/SSIM."""
        from patrol_compress.api import defend as run_defend
        from patrol_compress.config.privacy import load_attack_config

        use_threads(threads)
        check_utf8_path(out, "--out")
        settings = None if config is None else load_attack_config(config)
        names = [d.strip() for d in defense.split(",") if d.strip()] if defense else None
        attacks = [a.strip() for a in attack.split(",") if a.strip()] if attack else None
        summary = run_defend(
            run,
            out,
            defenses=names,
            strengths=_floats(strengths),
            split=split,
            attacks=attacks,
            force=force,
            include_undefended=not no_undefended,
            config=settings,
            trust_model_code=trust_model_code,
            log=lambda line: console.print(line, highlight=False, markup=False),
        )
        folder = out if out is not None else run / "defenses"
        console.print(
            f"{len(summary['points'])} points at split {summary['split']}; "
            f"wrote {folder / DEFENSES_FILE}",
            highlight=False,
            markup=False,
        )
