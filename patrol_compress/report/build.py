"""``build_report``: read attack.json files, write FILE.html, FILE.md and FILE_files/.

Every input is read and checked before the first byte is written, and the
whole report (page, markdown, plots, grids) is built in a hidden folder next
to it and only then renamed into place, so a report that fails half-way (a
full disk) leaves the previous one intact. Existing outputs are refused unless
``force``; with ``force`` only the files this module writes are replaced (a
user's own files in ``FILE_files/`` stay).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from patrol_compress.errors import ArtifactError, OutputExistsError
from patrol_compress.io import temp_name_prefix
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
    try:
        points = load_points(inputs)
    except RecursionError:
        raise ArtifactError(
            f"{', '.join(map(str, inputs))[:200]}: an attack.json nests too deeply to be ours"
        ) from None
    report = Report(
        title=title or DEFAULT_TITLE,
        points=points,
        grids=[read_grid(p.grid.path, inside=p.source.parent) for p in points],
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

    files = {name: text.encode("utf-8") for name, text in names.items()} | grid_bytes
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(
            tempfile.mkdtemp(
                prefix=temp_name_prefix(html_path.stem), suffix=".partial", dir=html_path.parent
            )
        )
    except OSError as exc:
        raise ArtifactError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        _write_stage(stage, asset_dir.name, files, markdown, html)
        _swap_in(stage, html_path, md_path, asset_dir)
    except OSError as exc:
        raise ArtifactError(
            f"--out {out}: writing the report failed ({exc.strerror or exc}); "
            "the previous report is unchanged"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ReportFiles(html_path, md_path, asset_dir, len(points), len(report.plotted))


def _write_stage(
    stage: Path, assets_name: str, files: dict[str, bytes], markdown: str, html: str
) -> None:
    """Write the whole report into ``stage`` (same layout as its final place), synced."""
    folder = stage / assets_name
    folder.mkdir()
    for name, data in files.items():
        _write_synced(folder / name, data)
    _write_synced(stage / "page.md", markdown.encode("utf-8"))
    _write_synced(stage / "page.html", html.encode("utf-8"))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o644)


def _swap_in(stage: Path, html_path: Path, md_path: Path, asset_dir: Path) -> None:
    """Rename the staged report into place: only renames from here, nothing is written.

    The assets folder is swapped whole; a user's own files in the old one are
    moved over first, and the old report's plots and grids go with the old folder.
    """
    staged_assets = stage / asset_dir.name
    staged_assets.chmod(0o755)
    if asset_dir.is_dir():
        for f in asset_dir.iterdir():
            if not (f.is_file() and _OWN_ASSET.match(f.name)):
                os.replace(f, staged_assets / f.name)
        old = stage / "old-assets"
        os.replace(asset_dir, old)
    os.replace(staged_assets, asset_dir)
    os.replace(stage / "page.md", md_path)
    os.replace(stage / "page.html", html_path)  # last: its presence means the report is complete


def _refuse_existing(html: Path, md: Path, assets: Path, force: bool) -> None:
    for path, kind in ((html, "file"), (md, "file"), (assets, "folder")):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise OutputExistsError(f"{path} exists and is not a {kind}; expected a {kind} there")


def _slug(p: Point) -> str:
    return re.sub(r"[^a-z0-9]+", "-", p.label.lower()).strip("-")[:40].strip("-") or "point"
