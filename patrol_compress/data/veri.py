"""``veri``: the VeRi-776 vehicle re-identification folders.

Layout under ``data.root``: ``image_train/``, ``image_query/`` and
``image_test/`` (the test folder is the gallery). Identity and camera come from
the file name, ``<vehicle>_c<camera>_<timestamp>_<n>.jpg``, e.g.
``0002_c002_00030600_0.jpg`` is vehicle 2 seen by camera 2. Only the names are
read here; images are decoded lazily by :class:`FileDataset`, so a corrupt
image is reported (with its path) when it is first used.
"""

from __future__ import annotations

import re
from pathlib import Path

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data import DATASETS
from patrol_compress.data.base import DataBundle, FileDataset, dataset_root, relabel
from patrol_compress.data.imagefolder import image_files
from patrol_compress.errors import DataError

NAME_PATTERN = re.compile(r"^(?P<pid>\d+)_c(?P<cam>\d+)_[^.]*$")
EXPECTED_NAME = "<vehicle>_c<camera>_<timestamp>_<n>.jpg, e.g. 0002_c002_00030600_0.jpg"
LAYOUT = "image_train/, image_query/ and image_test/ (gallery) folders of VeRi-776 images"
SPLITS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


def parse_name(path: Path) -> tuple[int, int]:
    """``(vehicle id, camera id)`` from a VeRi file name; anything else is a DataError."""
    match = NAME_PATTERN.match(path.stem)
    if match is None:
        raise DataError(f"{path}: file name does not follow the VeRi pattern {EXPECTED_NAME}")
    return int(match["pid"]), int(match["cam"])


def scan_folder(folder: Path) -> tuple[list[Path], list[int], list[int]]:
    """Paths, vehicle ids and camera ids of every image in one VeRi folder."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected {LAYOUT}")
    paths = image_files(folder)
    if not paths:
        raise DataError(f"{folder}: no images (.jpg/.png/...) found; expected {LAYOUT}")
    parsed = [parse_name(p) for p in paths]
    return paths, [p for p, _ in parsed], [c for _, c in parsed]


@DATASETS.register("veri")
def load_veri(config: DataConfig) -> DataBundle:
    """Re-id bundle; train identities relabelled 0..n-1, query/gallery keep raw ids."""
    root = dataset_root(config)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; expected {LAYOUT}")
    size = config.image_size
    splits = {name: scan_folder(root / folder) for name, folder in SPLITS.items()}
    train_paths, train_pids, train_cams = splits["train"]
    labels, num_classes = relabel(train_pids)
    return DataBundle(
        task="reid",
        name="veri",
        train=FileDataset(train_paths, labels, train_cams, size),
        query=FileDataset(*splits["query"], image_size=size),
        gallery=FileDataset(*splits["gallery"], image_size=size),
        num_classes=num_classes,
    )
