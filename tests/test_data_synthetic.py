"""The generated default dataset: sizes, protocol, determinism, cache, grids."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patrol_compress.data import build_data, synthetic, synthetic_draw
from patrol_compress.data.base import DataBundle
from patrol_compress.data.grid import save_image_grid, save_sample_grid
from patrol_compress.recipe import DataConfig

IDS, CAMS, PER_CAM, SIZE = 8, 3, 2, 32
SMALL: dict[str, object] = {
    "num_identities": IDS,
    "num_cameras": CAMS,
    "images_per_camera": PER_CAM,
    "image_size": SIZE,
    "test_fraction": 0.25,
}


TINY: dict[str, object] = {"num_identities": 4, "num_cameras": 2, "images_per_camera": 1}


def small_config(cache: Path, **overrides: object) -> DataConfig:
    return DataConfig(**{**SMALL, "cache_dir": cache, **overrides})  # type: ignore[arg-type]


def tiny_config(cache: Path, **overrides: object) -> DataConfig:
    """For cache and determinism checks, where the content does not matter."""
    return small_config(cache, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return build_data(small_config(tmp_path_factory.mktemp("cache")))


def test_split_sizes_and_image_tensors(bundle: DataBundle) -> None:
    assert bundle.task == "reid" and bundle.name == "synthetic-vehicles"
    assert bundle.query is not None and bundle.gallery is not None and bundle.test is None
    per_id = CAMS * PER_CAM
    assert bundle.num_classes == 6
    assert len(bundle.train) == 6 * per_id
    assert len(bundle.query) == 2 * CAMS  # one query per test identity and camera
    assert len(bundle.gallery) == 2 * per_id - 2 * CAMS
    img, pid, camid = bundle.train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.std()) > 0.05  # a picture, not a flat fill
    assert isinstance(pid, int) and isinstance(camid, int)


def test_train_relabelled_and_identities_disjoint(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    arrays = synthetic.load_arrays(config)
    raw_train = set(arrays["train_pids"].tolist())
    raw_test = set(arrays["query_pids"].tolist()) | set(arrays["gallery_pids"].tolist())
    assert raw_train.isdisjoint(raw_test)
    assert raw_train | raw_test == set(range(IDS))
    b = build_data(config)
    assert set(b.train.pids) == set(range(b.num_classes))


def test_every_query_has_cross_camera_gallery_matches(bundle: DataBundle) -> None:
    assert bundle.query is not None and bundle.gallery is not None
    pairs = list(zip(bundle.query.pids, bundle.query.camids, strict=True))
    assert len(set(pairs)) == len(pairs)  # one query per identity and camera
    gallery_cams: dict[int, set[int]] = defaultdict(set)
    for pid, cam in zip(bundle.gallery.pids, bundle.gallery.camids, strict=True):
        gallery_cams[pid].add(cam)
    assert set(gallery_cams) == set(bundle.query.pids)
    for pid, cam in zip(bundle.query.pids, bundle.query.camids, strict=True):
        assert gallery_cams[pid] - {cam}, f"query {pid} has no other-camera gallery image"


def test_every_identity_is_seen_by_every_camera(bundle: DataBundle) -> None:
    cams: dict[int, list[int]] = defaultdict(list)
    for pid, cam in zip(bundle.train.pids, bundle.train.camids, strict=True):
        cams[pid].append(cam)
    expected = sorted(list(range(CAMS)) * PER_CAM)
    assert all(sorted(c) == expected for c in cams.values())


def test_same_seed_same_arrays_other_seed_differs(tmp_path: Path) -> None:
    a = synthetic.load_arrays(tiny_config(tmp_path / "a"))
    b = synthetic.load_arrays(tiny_config(tmp_path / "b"))
    c = synthetic.load_arrays(tiny_config(tmp_path / "c", seed=1))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train_images"], c["train_images"])


def test_negative_seed_is_accepted(tmp_path: Path) -> None:
    b = build_data(tiny_config(tmp_path, seed=-3))
    assert len(b.train) > 0


def test_cache_hit_skips_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path)
    first = synthetic.load_arrays(config)
    files = list(tmp_path.glob("synthetic-vehicles-*.npz"))
    assert len(files) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writer left nothing behind

    def fail(_: object) -> None:
        raise AssertionError("cache was not used")

    monkeypatch.setattr(synthetic, "generate", fail)
    second = synthetic.load_arrays(config)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_cache_key_covers_every_parameter(tmp_path: Path) -> None:
    base = synthetic.Params.of(small_config(tmp_path))
    keys = {base.key()}
    for field, value in [
        ("seed", 5),
        ("num_identities", 9),
        ("num_cameras", 4),
        ("images_per_camera", 3),
        ("test_fraction", 0.5),
        ("image_size", 48),
    ]:
        keys.add(synthetic.Params.of(small_config(tmp_path, **{field: value})).key())
    assert len(keys) == 7


@pytest.mark.parametrize("garbage", [b"not a zip file", b"PK\x03\x04 truncated", b""])
def test_corrupt_cache_is_regenerated(tmp_path: Path, garbage: bytes) -> None:
    config = tiny_config(tmp_path)
    fresh = synthetic.load_arrays(config)
    path = synthetic.cache_file(config, synthetic.Params.of(config))
    path.write_bytes(garbage)
    again = synthetic.load_arrays(config)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], again[key])
    assert path.stat().st_size > 1000  # rewritten with valid data


def test_cache_with_wrong_content_is_regenerated(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    fresh = synthetic.load_arrays(config)
    path = synthetic.cache_file(config, synthetic.Params.of(config))
    with open(path, "wb") as fh:
        np.savez(fh, key=np.asarray("other"), train_images=np.zeros((1, 2, 2, 3), np.uint8))
    np.testing.assert_array_equal(
        synthetic.load_arrays(config)["train_images"], fresh["train_images"]
    )


def test_default_cache_dir_is_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = DataConfig(**{**SMALL, **TINY})  # type: ignore[arg-type]
    build_data(config)
    assert list((tmp_path / ".cache" / "patrol-compress").glob("synthetic-vehicles-*.npz"))


def test_cameras_include_front_and_rear_views() -> None:
    for n in (2, 3, 6):
        views = synthetic.camera_views(np.random.default_rng(n), n)
        assert len(views) == n and {"front", "rear"} <= set(views)


def test_plate_image_has_dark_characters_on_a_light_plate() -> None:
    text = synthetic_draw.plate_string(np.random.default_rng(0))
    assert 7 <= len(text) <= 9 and any(ch.isdigit() for ch in text)
    plate = np.asarray(synthetic_draw.plate_image(text, (238, 238, 232)))
    dark = (plate.mean(axis=2) < 100).mean()
    assert 0.1 < dark < 0.6


def test_generated_images_have_64px_default(tmp_path: Path) -> None:
    b = build_data(tiny_config(tmp_path, image_size=64))
    assert b.train[0][0].shape == (3, 64, 64)


def test_sample_grid_png_has_identity_rows_and_camera_columns(
    bundle: DataBundle, tmp_path: Path
) -> None:
    out = save_sample_grid(bundle, tmp_path / "grid.png", n=4)
    with Image.open(out) as im:
        assert im.format == "PNG"
        pad = 2
        assert im.size == (pad + CAMS * (SIZE + pad), pad + 4 * (SIZE + pad))


def test_image_grid_accepts_float_chw_uint8_hwc_grey_and_blanks(tmp_path: Path) -> None:
    chw = torch.rand(3, 10, 10)
    hwc = np.full((10, 10, 3), 200, dtype=np.uint8)
    grey = np.zeros((10, 10), dtype=np.float32)
    out = save_image_grid([chw, hwc, None, grey], tmp_path / "sub" / "g.png", ncols=2)
    with Image.open(out) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape == (2 + 2 * 12, 2 + 2 * 12, 3)
    assert (arr[2:12, 14:24] == 200).all()  # uint8 kept as is
    assert (arr[14:24, 2:12] == 255).all()  # blank cell stays white
    assert (arr[14:24, 14:24] == 0).all()  # grey float 0 -> black
    batch = torch.rand(5, 1, 8, 8)  # a DataLoader batch of grey images
    save_image_grid(batch.numpy(), tmp_path / "batch.png", ncols=5)
    assert (tmp_path / "batch.png").is_file()


def test_image_grid_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        save_image_grid([np.zeros((10, 10, 5))], tmp_path / "x.png", ncols=1)
    with pytest.raises(ValueError, match="at least one image"):
        save_image_grid([None], tmp_path / "x.png", ncols=1)


def test_plate_boxes_are_exactly_where_the_plate_is_pasted() -> None:
    """Render the same image twice, once with a magenta plate: the pixels that change
    lie inside the recorded box (plus one pixel of filter spread) and fill most of it."""
    size = 128
    canvas = synthetic_draw.canvas_size(size)
    cam_rng = np.random.default_rng(7)
    views = synthetic_draw.camera_views(cam_rng, 2)
    for c, view in enumerate(views):
        cam = synthetic_draw.make_camera(np.random.default_rng(100 + c), view, canvas)
        vehicle = synthetic_draw.sample_vehicle(np.random.default_rng(3))
        plate = synthetic_draw.plate_image(vehicle.plate, vehicle.plate_bg)
        magenta = Image.new("RGB", plate.size, (255, 0, 255))
        a, box = synthetic_draw.render(vehicle, cam, plate, np.random.default_rng(5), size)
        b, box_b = synthetic_draw.render(vehicle, cam, magenta, np.random.default_rng(5), size)
        assert np.array_equal(box, box_b)
        x0, y0, x1, y1 = (box * size).tolist()
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, view
        changed = np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 24
        rows, cols = np.nonzero(changed)
        assert len(rows) > 0, view
        spread = 2.5  # box filter + camera blur reach about a pixel or two outside
        assert cols.min() >= x0 - spread and cols.max() <= x1 + spread, view
        assert rows.min() >= y0 - spread and rows.max() <= y1 + spread, view
        inside = changed[int(y0 + 1) : int(y1 - 1), int(x0 + 1) : int(x1 - 1)]
        assert inside.mean() > 0.5, view


def test_generated_splits_carry_one_plate_box_per_image(bundle: DataBundle) -> None:
    for ds in (bundle.train, bundle.query, bundle.gallery):
        assert ds is not None and ds.region_boxes is not None
        boxes = ds.region_boxes
        assert boxes.shape == (len(ds), 4)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        assert visible.mean() > 0.95
