"""``build_report``: read attack.json files, write FILE.html, FILE.md and FILE_files/.

Every input is read and checked before the first byte is written, and every
file is written to a temporary name and renamed, so a failed report leaves
the previous one intact. Existing outputs are refused unless ``force``; with
``force`` only the files this module writes are replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from patrol_compress.errors import ArtifactError, OutputExistsError
from patrol_compress.io import atomic_path, write_text
from patrol_compress.report.collect import Point, load_points
from patrol_compress.report.content import DEFAULT_TITLE, Report
from patrol_compress.report.html_page import render_html
from patrol_compress.report.images import read_grid
from patrol_compress.report.markdown_page import Assets, render_markdown
from patrol_compress.report.plot import plane_svg

HTML_SUFFIXES = (".html", ".htm")
# What a report writes into FILE_files/; --force removes only these.
_OWN_ASSET = re.compile(r"^(plane-(psnr|ssim)\.svg|grid-\d{2,}-[a-z0-9-]*\.(png|jpg|gif|webp))$")


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    assets: Path
    points: int
    plotted: int


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """FILE.html -> (FILE.html, FILE.md, FILE_files/)."""
    if out.suffix.lower() not in HTML_SUFFIXES:
        raise ArtifactError(f"--out {out}: expected a file name ending in .html")
    return out, out.with_suffix(".md"), out.with_name(f"{out.stem}_files")


def build_report(
    inputs: list[Path], out: Path, title: str | None = None, force: bool = False
) -> ReportFiles:
    html_path, md_path, asset_dir = output_paths(out)
    _refuse_existing(html_path, md_path, asset_dir, force)
    points = load_points(inputs)
    report = Report(
        title=title or DEFAULT_TITLE,
        points=points,
        grids=[read_grid(p.grid.path) for p in points],
        base=html_path.parent,
    )

    names = {
        "plane-psnr.svg": plane_svg(points, "psnr", standalone=True),
        "plane-ssim.svg": plane_svg(points, "ssim", standalone=True),
    }
    grid_files: list[str | None] = []
    grid_bytes: dict[str, bytes] = {}
    for i, (p, grid) in enumerate(zip(points, report.grids, strict=True)):
        if not grid.ok:
            grid_files.append(None)
            continue
        name = f"grid-{i + 1:02d}-{_slug(p)}{grid.suffix}"
        grid_bytes[name] = grid.data
        grid_files.append(f"{asset_dir.name}/{name}")
    assets = Assets(
        plane_psnr=f"{asset_dir.name}/plane-psnr.svg",
        plane_ssim=f"{asset_dir.name}/plane-ssim.svg",
        grids=grid_files,
    )
    markdown = render_markdown(report, assets)
    html = render_html(report)

    _clear_own_assets(asset_dir)
    for name, text in names.items():
        write_text(asset_dir / name, text)
    for name, data in grid_bytes.items():
        with atomic_path(asset_dir / name) as tmp:
            tmp.write_bytes(data)
    write_text(md_path, markdown)
    write_text(html_path, html)  # last: its presence means the report is complete
    return ReportFiles(html_path, md_path, asset_dir, len(points), len(report.plotted))


def _refuse_existing(html: Path, md: Path, assets: Path, force: bool) -> None:
    for path, kind in ((html, "file"), (md, "file"), (assets, "folder")):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise OutputExistsError(f"{path} exists and is not a {kind}; expected a {kind} there")


def _clear_own_assets(folder: Path) -> None:
    """Drop a previous report's plots and grids (a grid list can shrink); keep the rest."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_file() and _OWN_ASSET.match(f.name):
            f.unlink()


def _slug(p: Point) -> str:
    return re.sub(r"[^a-z0-9]+", "-", p.label.lower()).strip("-")[:40].strip("-") or "point"
