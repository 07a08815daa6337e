"""Reconstruction grids: read once, checked by Pillow, shared by both writers.

A grid that is missing or unreadable must show up in the report as a note that
says so, never as a broken image, so every grid is opened and verified before
it is embedded (HTML) or copied (markdown).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, UnidentifiedImageError

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp"}


@dataclass(frozen=True)
class GridImage:
    """A grid's bytes and pixel size, or why it cannot be shown (``problem``)."""

    path: Path
    data: bytes = b""
    format: str = ""
    width: int = 0
    height: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def suffix(self) -> str:
        return _SUFFIX.get(self.format, ".png")

    def data_uri(self) -> str:
        mime = _MIME.get(self.format, "image/png")
        return f"data:{mime};base64,{base64.b64encode(self.data).decode('ascii')}"


MAX_GRID_BYTES = 64 << 20
MAX_GRID_PIXELS = 40_000_000
"""A grid is at most a few thousand pixels a side; anything far larger is refused
unread or undecoded (a decompression bomb would exhaust memory)."""


def read_grid(path: Path, inside: Path | None = None) -> GridImage:
    """Read and verify the grid at ``path``, which must lie inside the folder ``inside``.

    ``grid.file`` comes from an attack.json: an absolute path or ``../../``
    would let a report embed any image on the disk, so it must resolve
    (symlinks included) inside the folder of its attack.json.
    """
    if inside is not None and not path.resolve().is_relative_to(inside.resolve()):
        return GridImage(
            path, problem=f"grid refused: {path} is outside the folder of its attack.json"
        )
    if not path.is_file():
        return GridImage(path, problem=f"grid missing: {path} does not exist")
    if path.stat().st_size > MAX_GRID_BYTES:
        return GridImage(path, problem=f"grid refused: {path} is larger than 64 MB")
    try:
        data = path.read_bytes()
        with Image.open(BytesIO(data)) as im:
            if im.size[0] * im.size[1] > MAX_GRID_PIXELS:
                return GridImage(path, problem=f"grid refused: {path} is {im.size} pixels")
        with Image.open(BytesIO(data)) as im:
            im.verify()  # catches truncated and corrupt files without decoding twice
        with Image.open(BytesIO(data)) as im:
            fmt, (w, h) = im.format or "", im.size
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        return GridImage(path, problem=f"grid unreadable: {path} ({type(exc).__name__})")
    if fmt not in _MIME:
        return GridImage(path, problem=f"grid unreadable: {path} is {fmt or 'unknown'}, not PNG")
    return GridImage(path, data, fmt, w, h)
