"""PNG grids of images: dataset samples and (reused elsewhere) reconstructions.

:func:`save_image_grid` takes images as uint8 (0..255) or float (0..1), laid
out ``H x W x C`` or ``C x H x W`` with 1 or 3 channels (a batch from a
DataLoader works as is), so the same helper shows data samples, inversion
reconstructions and their originals side by side. PNG files are written
atomically, so a crash never leaves a half-written figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from patrol_compress.data.base import ArrayDataset, DataBundle, ReidDataset
from patrol_compress.io import atomic_path

PAD = 2
PAD_COLOUR = 255


def to_uint8_hwc(image: Any) -> np.ndarray:
    """One image as ``H x W x 3`` uint8; float images are read as [0, 1]."""
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image H x W x C or C x H x W, found shape {arr.shape}")
    if arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[2] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, found shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0)
        arr = arr.astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def image_grid(images: Any, ncols: int) -> Image.Image:
    """Images (None entries stay blank) in rows of ``ncols`` cells with a white border."""
    cells = [None if im is None else to_uint8_hwc(im) for im in images]
    shown = [c for c in cells if c is not None]
    if not shown:
        raise ValueError("expected at least one image for the grid, found none")
    if ncols < 1:
        raise ValueError(f"expected ncols >= 1, found {ncols}")
    h = max(c.shape[0] for c in shown)
    w = max(c.shape[1] for c in shown)
    nrows = -(-len(cells) // ncols)
    grid = np.full(
        (PAD + nrows * (h + PAD), PAD + ncols * (w + PAD), 3), PAD_COLOUR, dtype=np.uint8
    )
    for idx, cell in enumerate(cells):
        if cell is None:
            continue
        r, c = divmod(idx, ncols)
        y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
        grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return Image.fromarray(grid, mode="RGB")


def save_image_grid(
    images: np.ndarray | Sequence[Any], path: Path | str, ncols: int, scale: int = 1
) -> Path:
    """Write ``images`` as one PNG grid (``scale`` > 1 enlarges with nearest pixels)."""
    img = image_grid(images, ncols)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    target = Path(path)
    with atomic_path(target) as tmp:
        img.save(tmp, format="PNG")
    return target


def _image(ds: ReidDataset, i: int) -> np.ndarray:
    if isinstance(ds, ArrayDataset):
        return ds.images[i]
    was, ds.augment = ds.augment, False  # no random flips in a figure
    try:
        return to_uint8_hwc(ds[i][0])
    finally:
        ds.augment = was


def sample_cells(ds: ReidDataset, n: int, max_cameras: int) -> tuple[list[Any], int]:
    """First image of each (identity, camera) for the first ``n`` identities."""
    cams = sorted(set(ds.camids))[:max_cameras]
    col = {c: j for j, c in enumerate(cams)}
    pids = sorted(set(ds.pids))[:n]
    row = {p: r for r, p in enumerate(pids)}
    cells: list[Any] = [None] * (len(pids) * len(cams))
    for i, (p, c) in enumerate(zip(ds.pids, ds.camids, strict=True)):
        if p in row and c in col:
            slot = row[p] * len(cams) + col[c]
            if cells[slot] is None:
                cells[slot] = _image(ds, i)
    return cells, len(cams)


def save_sample_grid(
    data: DataBundle | ReidDataset,
    path: Path | str,
    n: int = 8,
    max_cameras: int = 8,
    scale: int = 1,
) -> Path:
    """PNG of samples: rows are identities (a bundle's training split), columns cameras."""
    ds = data.train if isinstance(data, DataBundle) else data
    cells, ncols = sample_cells(ds, n, max_cameras)
    return save_image_grid(cells, path, ncols, scale=scale)
