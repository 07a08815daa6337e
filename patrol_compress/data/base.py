"""Dataset contract shared by every loader.

Every loader returns a :class:`DataBundle`: a training split and either a
query/gallery pair with disjoint identities (re-identification, as in VeRi) or a
test split (classification). Items are ``(image, pid, camid)`` with the image a
float tensor ``C x H x W`` in [0, 1]: no normalisation, so inversion attacks
reconstruct and are scored in the same [0, 1] space (PSNR with data range 1).
Training identities are relabelled 0..n-1; query/gallery keep their raw ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from patrol_compress.config.recipe import DataConfig
from patrol_compress.errors import DataError

Item = tuple[torch.Tensor, int, int]


class ReidDataset(Dataset[Item]):
    """Base class: ``pids`` and ``camids`` are known without decoding any image."""

    pids: list[int]
    camids: list[int]
    channels: int
    image_size: int
    augment: bool = False
    region_boxes: np.ndarray | None = None
    """Per-image private region (x0, y0, x1, y1 fractions), when the dataset knows it
    (the generated vehicles record their plates); attacks score it separately."""

    def __len__(self) -> int:
        return len(self.pids)

    def set_augment(self, flag: bool) -> ReidDataset:
        """Random horizontal flips for training (the paper's pre-processing)."""
        self.augment = flag
        return self

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        if self.augment and torch.rand(()) < 0.5:
            img = torch.flip(img, dims=[2])
        return img


class ArrayDataset(ReidDataset):
    """Images held in memory as uint8 ``N x H x W x C`` (generated or idx data)."""

    def __init__(self, images: np.ndarray, pids: Sequence[int], camids: Sequence[int]) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(
                f"expected uint8 images N x H x W x C, found {images.dtype} {images.shape}"
            )
        if not (len(images) == len(pids) == len(camids)):
            raise DataError(
                f"images ({len(images)}), pids ({len(pids)}) and camids ({len(camids)}) "
                "differ in length"
            )
        self.images = images
        self.pids = [int(p) for p in pids]
        self.camids = [int(c) for c in camids]
        self.channels = int(images.shape[3])
        self.image_size = int(images.shape[1])

    def __getitem__(self, i: int) -> Item:
        img = (
            torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / 255.0
        )
        return self._finish(img), self.pids[i], self.camids[i]


class FileDataset(ReidDataset):
    """Images read from files, resized to a square ``image_size``."""

    def __init__(
        self,
        paths: Sequence[Path],
        pids: Sequence[int],
        camids: Sequence[int],
        image_size: int,
        channels: int = 3,
    ) -> None:
        if not (len(paths) == len(pids) == len(camids)):
            raise DataError("paths, pids and camids differ in length")
        self.paths = [Path(p) for p in paths]
        self.pids = [int(p) for p in pids]
        self.camids = [int(c) for c in camids]
        self.image_size = image_size
        self.channels = channels

    def __getitem__(self, i: int) -> Item:
        img = load_image(self.paths[i], self.image_size, self.channels)
        return self._finish(img), self.pids[i], self.camids[i]


def load_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """Decode, convert and resize one image; an unreadable file names itself."""
    try:
        with Image.open(path) as raw:
            im = raw.convert("RGB" if channels == 3 else "L")
            im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def dataset_root(config: DataConfig, hint: str = "") -> Path:
    """``data.root`` as a Path (the recipe validator already requires it for folder kinds)."""
    if config.root is None:
        raise DataError(f"data.root is required for data.kind '{config.kind}'{hint}")
    return Path(config.root)


def relabel(pids: Sequence[int]) -> tuple[list[int], int]:
    """Map raw identity ids to 0..n-1 (sorted order); returns labels and n."""
    table = {p: i for i, p in enumerate(sorted(set(pids)))}
    return [table[p] for p in pids], len(table)


@dataclass
class DataBundle:
    """What every loader returns; see the module docstring."""

    task: Literal["reid", "classification"]
    train: ReidDataset
    num_classes: int
    query: ReidDataset | None = None
    gallery: ReidDataset | None = None
    test: ReidDataset | None = None
    name: str = ""

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> int:
        return self.train.image_size

    def summary(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {
            "name": self.name,
            "task": self.task,
            "train_images": len(self.train),
            "train_classes": self.num_classes,
        }
        for split in ("query", "gallery", "test"):
            ds = getattr(self, split)
            if ds is not None:
                out[f"{split}_images"] = len(ds)
                out[f"{split}_identities"] = len(set(ds.pids))
        return out
