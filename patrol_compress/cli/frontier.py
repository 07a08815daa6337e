"""``patrol-compress frontier RECIPE``: a privacy frontier of methods against plain pruning."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from patrol_compress.cli.common import (
    CONTINUES,
    check_utf8_path,
    choice_option,
    console,
    threads_option,
    use_threads,
    with_user_errors,
)
from patrol_compress.errors import UsageError

METHODS = typer.Option(
    None,
    "--methods",
    help="Comma-separated methods, pruning-only among them (default: the recipe's "
    "frontier.methods).",
)
KNOB = typer.Option(
    None,
    "--knob",
    help="[METHOD:]PATH=V1,V2,...: the patrol setting varied to span accuracy; repeatable "
    "(default: the recipe's frontier.knobs).",
)
SEEDS = typer.Option(None, "--seeds", help="Comma-separated pruning seeds (at least 2).")
TARGET_SEEDS = typer.Option(
    None, "--target-seeds", help="Comma-separated target seeds, one trained target each (>= 2)."
)
REFERENCES = typer.Option(
    None, "--references", help="Comma-separated undefended splits to attack alike."
)
ATTACKS = typer.Option(None, "--attacks", help="Comma-separated attacks (default: the recipe's).")
CONFIG = typer.Option(
    None, "--config", help="Attack settings YAML (default: the recipe's attack: section)."
)
WORK = typer.Option(None, "--work", help="Work folder (default: runs/frontier/<name>).")
OUT = typer.Option(None, "--out", help="Folder for the results (default: the work folder).")
NAME = typer.Option(None, "--name", help="Name of this frontier (default: the recipe's name).")
STEM = typer.Option(
    None, "--stem", help="File name stem of the results (default: frontier_<name>)."
)
SHARD = typer.Option("0/1", "--shard", help="I/N: with --stage points, every N-th point from I.")
BOOTSTRAP = typer.Option(None, "--bootstrap", help="Bootstrap resamples of each interval.")


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated integers, found '{text}'") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _shard(text: str) -> tuple[int, int]:
    i, slash, n = text.partition("/")
    if not slash or not i.isdigit() or not n.isdigit() or int(n) < 1:
        raise UsageError(f"--shard: expected I/N, found '{text}'")
    return int(i), int(n)


def register(app: typer.Typer) -> None:
    @app.command()
    @with_user_errors(CONTINUES)
    def frontier(
        recipe: Path = typer.Argument(
            ..., help="Recipe YAML whose split, budget and data are used."
        ),
        methods: str | None = METHODS,
        knob: list[str] | None = KNOB,
        seeds: str | None = SEEDS,
        target_seeds: str | None = TARGET_SEEDS,
        references: str | None = REFERENCES,
        attacks: str | None = ATTACKS,
        config: Path | None = CONFIG,
        work: Path | None = WORK,
        out: Path | None = OUT,
        name: str | None = NAME,
        stem: str | None = STEM,
        stage: str = choice_option(
            "all",
            "--stage",
            ("all", "targets", "points", "collect"),
            "targets: train the targets only; points: make this --shard's points; collect: "
            "compare finished points; all: everything",
        ),
        shard: str = SHARD,
        bootstrap: int | None = BOOTSTRAP,
        threads: int | None = threads_option(),
    ) -> None:
        """Build, attack and compare privacy-frontier points of a recipe (resumable)."""
        use_threads(threads)
        check_utf8_path(work, "--work")
        check_utf8_path(out, "--out")
        from patrol_compress.api import frontier as run

        given: list[tuple[str, object]] = [
            ("--methods", methods),
            *[("--knob", k) for k in knob or []],
            ("--seeds", seeds),
            ("--target-seeds", target_seeds),
            ("--references", references),
            ("--attacks", attacks),
            ("--config", config),
            ("--work", work),
            ("--out", out),
            ("--name", name),
            ("--stem", stem),
            ("--bootstrap", bootstrap),
            ("--threads", threads),
        ]
        # The whole frontier's command (any --stage/--shard made only part of it).
        command = shlex.join(
            ["patrol-compress", "frontier", str(recipe)]
            + [x for flag, value in given if value is not None for x in (flag, str(value))]
        )

        result = run(
            recipe,
            methods=_names(methods),
            knobs=knob or None,
            seeds=_ints(seeds, "--seeds"),
            target_seeds=_ints(target_seeds, "--target-seeds"),
            references=_ints(references, "--references"),
            attacks=_names(attacks),
            config=config,
            work=work,
            out=out,
            name=name,
            stage=stage,
            shard=_shard(shard),
            bootstrap=bootstrap,
            stem=stem,
            command=command,
        )
        if result is None:
            return
        for key, c in result["comparisons"].items():
            margin = "none" if c["margin"] is None else f"{c['margin']:+.3f}"
            console.print(f"{key}: margin {margin} ({c['basis']})", highlight=False, markup=False)
