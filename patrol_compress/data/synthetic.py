"""``synthetic-vehicles``: the built-in default dataset, drawn instead of downloaded.

Why generate? The default must work offline and be reproducible, and it must
hold what a feature-inversion attacker is after, so that privacy can be judged
on it: every vehicle carries a licence plate with a readable random string
(e.g. "AB 123 C") and a driver's face behind the windscreen. Everything is
drawn with PIL on a supersampled canvas (at least 256 px) and downsampled with
a box filter, so plate characters stay legible at 128 px and still read as
a plate with characters at 64 px.

Identities. Each identity is one vehicle: a body shape (sedan, SUV, van, box
truck or hatchback, with jittered proportions), a paint and accent colour,
details (stripes, roof rack or sign, rim style, mirror colour, head/tail light
and grille styles, fog lights, spoiler, spare wheel), a plate string and a
driver (skin tone, hair colour and style, eye colour, glasses, beard, shirt).
Colour, shape and plate keep identities distinguishable across cameras.

Camera model. Every camera is a fixed pinhole camera with its own viewpoint:
front or rear (at least one of each, so front and rear views of the same
vehicle must be matched), a yaw of up to about 0.4 rad that reveals one side of
the vehicle with its wheels, a camera height, framing (scale and offset), a
static background scene (road, grass, building or parking lot, with textures),
lighting (brightness, contrast, gamma and colour cast), blur and sensor noise.
Each image of a camera jitters framing, yaw and lighting a little, draws new
noise and, now and then, a pole in front of the vehicle. Cameras therefore
change appearance a lot (a white car under a dim, blue-cast camera is not
white), which keeps re-identification non-trivial.
Front cameras see the driver's face and the front plate; rear cameras see the
back of the driver's head and the rear plate (the same string).

Splits. Identities, not images, are split: ``data.test_fraction`` of them are
test identities, so no test vehicle is seen in training. Train identities are
relabelled 0..n-1; query and gallery keep the raw identity ids (0..N-1).

Query/gallery. As in VeRi-776 (1,678 queries for 200 test vehicles), each test
identity contributes one query image *per camera* (a random one of that
camera's images); all its other images form the gallery. So every query has
same-identity gallery images from the other cameras (the cross-camera matches
that count), and the default set gets 180 queries instead of 30: one query per
identity made a single query worth 3.3 rank-1 points, too coarse to see a
3-point accuracy change. Same-camera gallery matches exist when
``images_per_camera > 1``; VeRi-style evaluation discards them as junk.

Randomness and cache. Every random choice comes from a numpy Generator seeded
by ``(data.seed, purpose, index...)``, so one image does not depend on the
order of generation. The arrays are cached as a ``.npz`` keyed by a hash of
every generation parameter and :data:`GENERATOR_VERSION`; a corrupt cache file
is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data import DATASETS
from patrol_compress.data.base import ArrayDataset, DataBundle, relabel
from patrol_compress.data.synthetic_draw import (
    camera_views,
    canvas_size,
    make_camera,
    plate_image,
    render,
    sample_vehicle,
)
from patrol_compress.io import atomic_path

GENERATOR_VERSION = 4
"""Bump whenever drawing changes, so stale caches are not reused."""

DEFAULT_CACHE_DIR = Path(".cache") / "patrol-compress"
SPLITS = ("train", "query", "gallery")
# ------------------------------------------------------------------------------ dataset


@dataclass(frozen=True)
class Params:
    """Every input of generation; their hash names the cache file."""

    seed: int
    num_identities: int
    num_cameras: int
    images_per_camera: int
    test_fraction: float
    image_size: int

    @staticmethod
    def of(config: DataConfig) -> Params:
        return Params(
            config.seed,
            config.num_identities,
            config.num_cameras,
            config.images_per_camera,
            config.test_fraction,
            config.image_size,
        )

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def entropy(self, *ids: int) -> list[int]:
        """Seed material for one purpose; negative seeds are folded into 64 bits."""
        return [self.seed % (1 << 64), *ids]


_PURPOSE_IDENTITY, _PURPOSE_CAMERA, _PURPOSE_IMAGE, _PURPOSE_SPLIT = 1, 2, 3, 4


def generate(p: Params) -> dict[str, np.ndarray]:
    """All images and the train/query/gallery split, as arrays (see module docstring)."""
    canvas = canvas_size(p.image_size)
    cam_rng = np.random.default_rng(p.entropy(_PURPOSE_CAMERA))
    views = camera_views(cam_rng, p.num_cameras)
    cameras = [
        make_camera(np.random.default_rng(p.entropy(_PURPOSE_CAMERA, c)), views[c], canvas)
        for c in range(p.num_cameras)
    ]
    n, c_, k_ = p.num_identities, p.num_cameras, p.images_per_camera
    images = np.empty((n, c_, k_, p.image_size, p.image_size, 3), dtype=np.uint8)
    boxes = np.zeros((n, c_, k_, 4), dtype=np.float32)
    for i in range(n):
        vehicle = sample_vehicle(np.random.default_rng(p.entropy(_PURPOSE_IDENTITY, i)))
        plate = plate_image(vehicle.plate, vehicle.plate_bg)
        for c, cam in enumerate(cameras):
            for k in range(k_):
                rng = np.random.default_rng(p.entropy(_PURPOSE_IMAGE, i, c, k))
                images[i, c, k], boxes[i, c, k] = render(vehicle, cam, plate, rng, p.image_size)
    return split_arrays(images, boxes, p)


def split_arrays(images: np.ndarray, boxes: np.ndarray, p: Params) -> dict[str, np.ndarray]:
    """Identity-disjoint train/test; one query per test identity and camera (boxes follow)."""
    n, c_, k_ = images.shape[:3]
    rng = np.random.default_rng(p.entropy(_PURPOSE_SPLIT))
    n_test = min(n - 1, max(1, round(p.test_fraction * n)))
    test_ids = set(rng.permutation(n)[:n_test].tolist())
    pid = np.broadcast_to(np.arange(n)[:, None, None], (n, c_, k_))
    cam = np.broadcast_to(np.arange(c_)[None, :, None], (n, c_, k_))
    role = np.zeros((n, c_, k_), dtype=np.int8)  # 0 train, 1 query, 2 gallery
    for i in sorted(test_ids):
        role[i] = 2
        for c in range(c_):
            role[i, c, int(rng.integers(k_))] = 1
    out: dict[str, np.ndarray] = {}
    for r, name in enumerate(SPLITS):
        sel = role == r
        out[f"{name}_images"] = images[sel]
        out[f"{name}_plate_boxes"] = boxes[sel]
        out[f"{name}_pids"] = pid[sel].astype(np.int64)
        out[f"{name}_camids"] = cam[sel].astype(np.int64)
    return out


def cache_file(config: DataConfig, p: Params) -> Path:
    folder = config.cache_dir if config.cache_dir is not None else Path.cwd() / DEFAULT_CACHE_DIR
    return Path(folder) / f"synthetic-vehicles-{p.key()}.npz"


def _read_cache(path: Path, p: Params) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent, corrupt or from another generator."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != p.key():
                return None
            arrays = {name: data[name] for name in data.files if name != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    size = (p.image_size, p.image_size, 3)
    total = 0
    for name in SPLITS:
        imgs = arrays.get(f"{name}_images")
        pids, cams = arrays.get(f"{name}_pids"), arrays.get(f"{name}_camids")
        boxes = arrays.get(f"{name}_plate_boxes")
        if imgs is None or pids is None or cams is None or boxes is None:
            return None
        if imgs.dtype != np.uint8 or boxes.shape != (len(imgs), 4):
            return None
        if imgs.shape[1:] != size or not (len(imgs) == len(pids) == len(cams)):
            return None
        total += len(imgs)
    if total != p.num_identities * p.num_cameras * p.images_per_camera:
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray], p: Params) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            savez: Any = np.savez  # numpy's stub types **kwds as its own flags
            savez(fh, key=np.asarray(p.key()), **arrays)
    except OSError as exc:
        warnings.warn(f"{path}: could not write the synthetic-data cache ({exc})", stacklevel=3)


def load_arrays(config: DataConfig) -> dict[str, np.ndarray]:
    """Cached arrays for ``config``; generated (and cached) when absent or corrupt."""
    p = Params.of(config)
    path = cache_file(config, p)
    arrays = _read_cache(path, p)
    if arrays is None:
        arrays = generate(p)
        _write_cache(path, arrays, p)
    return arrays


@DATASETS.register("synthetic-vehicles")
def load_synthetic(config: DataConfig) -> DataBundle:
    """The default re-id bundle (see the module docstring)."""
    a = load_arrays(config)
    labels, num_classes = relabel(a["train_pids"].tolist())

    def part(name: str, pids: list[int]) -> ArrayDataset:
        ds = ArrayDataset(a[f"{name}_images"], pids, a[f"{name}_camids"].tolist())
        ds.region_boxes = a[f"{name}_plate_boxes"]
        return ds

    return DataBundle(
        task="reid",
        name="synthetic-vehicles",
        train=part("train", labels),
        query=part("query", a["query_pids"].tolist()),
        gallery=part("gallery", a["gallery_pids"].tolist()),
        num_classes=num_classes,
    )
