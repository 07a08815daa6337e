"""``fashion-mnist``: Zalando's Fashion-MNIST from its four idx files.

The files (``train-images-idx3-ubyte.gz`` ... ``t10k-labels-idx1-ubyte.gz``,
gzipped or not) are parsed with numpy; nothing is downloaded. Debian and
Ubuntu package them: ``apt-get install dataset-fashion-mnist`` puts them in
:data:`DEBIAN_DIR`. The 28 x 28 grey images are resized with PIL's bilinear
filter to ``data.image_size`` and kept in memory as one channel.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data import DATASETS
from patrol_compress.data.base import ArrayDataset, DataBundle, dataset_root
from patrol_compress.data.imagefolder import cap_indices
from patrol_compress.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
NUM_CLASSES = 10
HOW_TO_GET = (
    f"install them with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) and set "
    f"data.root: {DEBIAN_DIR}, or download them from "
    "https://github.com/zalandoresearch/fashion-mnist into data.root"
)


def find_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; absent -> DataError saying how to get it."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / (stem + '.gz')}: Fashion-MNIST file not found (nor {stem}); {HOW_TO_GET}"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file (big-endian header, then uint8 data) after checking it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read idx file ({type(exc).__name__})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: not an idx file (only {len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: expected idx magic number {magic:#010x}, found {found:#010x}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header gives shape {tuple(dims)} ({expected} bytes) but the file "
            f"holds {len(raw) - header} data bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """``N x h x w`` grey uint8 -> ``N x size x size x 1`` with PIL bilinear."""
    if images.shape[1:] == (size, size):
        return images[:, :, :, None].copy()
    out = np.empty((len(images), size, size, 1), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        out[i, :, :, 0] = np.asarray(pil)
    return out


def _split(root: Path, prefix: str, cap: int, seed: int, size: int) -> ArrayDataset:
    images_path = find_file(root, FILES[f"{prefix}_images"])
    labels_path = find_file(root, FILES[f"{prefix}_labels"])
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"{labels_path}: expected labels 0..{NUM_CLASSES - 1}, found {int(labels.max())}"
        )
    keep = cap_indices(len(images), cap, seed)
    pids = labels[keep].astype(np.int64).tolist()
    return ArrayDataset(resize_all(images[keep], size), pids, [0] * len(pids))


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(config: DataConfig) -> DataBundle:
    """Classification bundle (10 classes, 1 channel) with optional per-split caps."""
    root = dataset_root(config, f"; {HOW_TO_GET}")
    if not root.is_dir():
        raise DataError(f"{root}: Fashion-MNIST folder not found; {HOW_TO_GET}")
    size = config.image_size
    train = _split(root, "train", config.max_train_images, config.seed, size)
    test = _split(root, "test", config.max_test_images, config.seed + 1, size)
    return DataBundle(
        task="classification",
        name="fashion-mnist",
        train=train,
        test=test,
        num_classes=NUM_CLASSES,
    )
