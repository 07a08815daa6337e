"""``imagefolder``: classification from ``root/train/<class>/*`` and ``root/test/<class>/*``.

Class names are sorted and numbered 0..n-1 from the *train* folders, so the
labels do not depend on file-system listing order and the test labels mean the
same classes. Every item has camera 0 (there are no cameras in classification).
The helpers :func:`image_files` and :func:`cap_indices` are shared with the
other folder loaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data import DATASETS
from patrol_compress.data.base import DataBundle, FileDataset, dataset_root
from patrol_compress.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})
LAYOUT = "root/train/<class>/*.jpg|png and root/test/<class>/*.jpg|png"


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Other files (lists, ``Thumbs.db``, ...) and hidden files (macOS ``._*``
    resource forks carry an image suffix but are not images) are skipped.
    """
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def cap_indices(n: int, cap: int, seed: int) -> np.ndarray:
    """Indices of a deterministic random subset of ``cap`` of ``n`` items (all if cap is 0).

    The subset is kept in the original order so a cap only drops items and a
    larger cap with the same seed does not reshuffle what is kept.
    """
    if cap <= 0 or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(abs(seed))
    return np.sort(rng.choice(n, size=cap, replace=False))


def _class_dirs(split_dir: Path) -> list[Path]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; expected the layout {LAYOUT}")
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{split_dir}: no class folders found; expected the layout {LAYOUT}")
    return dirs


def _collect(split_dir: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    label_of = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for cdir in _class_dirs(split_dir):
        if cdir.name not in label_of:
            continue
        files = image_files(cdir)
        if not files:
            raise DataError(
                f"{cdir}: class folder has no images (.jpg/.png/...); expected the layout {LAYOUT}"
            )
        paths.extend(files)
        labels.extend([label_of[cdir.name]] * len(files))
    return paths, labels


def _capped(
    paths: list[Path], labels: list[int], cap: int, seed: int
) -> tuple[list[Path], list[int]]:
    keep = cap_indices(len(paths), cap, seed)
    return [paths[i] for i in keep], [labels[i] for i in keep]


@DATASETS.register("imagefolder")
def load_imagefolder(config: DataConfig) -> DataBundle:
    """Classification bundle: ``train`` and ``test`` FileDatasets, labels as pids."""
    root = dataset_root(config)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; expected the layout {LAYOUT}")
    train_dir, test_dir = root / "train", root / "test"
    classes = [d.name for d in _class_dirs(train_dir)]
    test_classes = {d.name for d in _class_dirs(test_dir)}
    unknown = sorted(test_classes - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{test_dir}: test classes must also be train classes; "
            f"found {len(unknown)} not in {train_dir}: {shown}"
        )
    train_paths, train_labels = _capped(
        *_collect(train_dir, classes), config.max_train_images, config.seed
    )
    test_paths, test_labels = _capped(
        *_collect(test_dir, classes), config.max_test_images, config.seed + 1
    )
    size = config.image_size
    return DataBundle(
        task="classification",
        name="imagefolder",
        train=FileDataset(train_paths, train_labels, [0] * len(train_paths), size),
        test=FileDataset(test_paths, test_labels, [0] * len(test_paths), size),
        num_classes=len(classes),
    )
