"""``patrol-compress report PATH... --out FILE.html``: attack results as HTML + markdown."""

from __future__ import annotations

from pathlib import Path

import typer

from patrol_compress.cli.common import check_utf8_path, console, user_errors

PATHS = typer.Argument(..., help="attack.json files, or folders searched recursively for them.")
OUT = typer.Option(
    None,
    "--out",
    help="Report file (.html); FILE.md and FILE_files/ (plots, grids) are written next to it. "
    "Default: report.html in the first PATH (its folder, for an attack.json file).",
)
TITLE = typer.Option(
    None, "--title", help="Report title (default: patrol-compress privacy report)."
)
FORCE = typer.Option(False, "--force", help="Overwrite an existing report.")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def report(
        paths: list[Path] = PATHS,
        out: Path | None = OUT,
        title: str | None = TITLE,
        force: bool = FORCE,
    ) -> None:
        """Tables, the privacy-utility plane and reconstruction grids from attack results."""
        from patrol_compress.report import build_report

        check_utf8_path(out, "--out")
        if out is None:
            first = paths[0]
            out = (first.parent if first.suffix == ".json" else first) / "report.html"
        files = build_report(paths, out, title=title, force=force)
        console.print(
            f"report of {files.points} point(s), {files.plotted} plotted: wrote {files.html}, "
            f"{files.markdown} and {files.assets}/",
            markup=False,
            highlight=False,
        )
