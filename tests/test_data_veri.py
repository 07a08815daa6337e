"""VeRi-776 folder loader on a small real layout of JPEG files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from patrol_compress.data import build_data
from patrol_compress.errors import DataError
from patrol_compress.recipe import DataConfig

TRAIN = [(2, 2), (2, 5), (7, 1), (7, 2), (7, 3), (13, 20)]
QUERY = [(50, 1), (61, 4)]
GALLERY = [(50, 3), (50, 1), (61, 2), (61, 8), (61, 4)]


def write_jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 24), (shade, 255 - shade, 90)).save(path, format="JPEG")


def make_veri(root: Path) -> Path:
    for folder, items in (("image_train", TRAIN), ("image_query", QUERY), ("image_test", GALLERY)):
        for n, (pid, cam) in enumerate(items):
            write_jpeg(root / folder / f"{pid:04d}_c{cam:03d}_{30600 + n:08d}_{n}.jpg", 20 * n)
    (root / "image_train" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "image_train" / "._0002_c002_00030600_0.jpg").write_bytes(b"resource fork")
    (root / "name_train.txt").write_text("0002_c002_00030600_0.jpg\n")
    return root


def config(root: Path, **kw: object) -> DataConfig:
    return DataConfig(kind="veri", root=root, image_size=32, **kw)  # type: ignore[arg-type]


def test_splits_ids_cameras_and_relabelling(tmp_path: Path) -> None:
    b = build_data(config(make_veri(tmp_path / "VeRi")))
    assert b.task == "reid" and b.name == "veri"
    assert b.query is not None and b.gallery is not None
    assert (len(b.train), len(b.query), len(b.gallery)) == (6, 2, 5)
    assert b.num_classes == 3
    assert sorted(set(b.train.pids)) == [0, 1, 2]
    assert b.train.pids == [0, 0, 1, 1, 1, 2]  # raw 2, 7, 13 in sorted order
    assert b.train.camids == [cam for _, cam in TRAIN]
    assert b.query.pids == [50, 61] and b.query.camids == [1, 4]
    assert sorted(b.gallery.pids) == [50, 50, 61, 61, 61]
    assert set(b.query.pids).isdisjoint({2, 7, 13})


def test_items_are_resized_float_tensors(tmp_path: Path) -> None:
    b = build_data(config(make_veri(tmp_path)))
    img, pid, cam = b.train[3]
    assert img.shape == (3, 32, 32)
    assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0
    assert (pid, cam) == (1, 2)


def test_bad_file_name_names_file_and_pattern(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    write_jpeg(root / "image_query" / "car_17.jpg", 0)
    with pytest.raises(DataError, match=r"car_17\.jpg.*0002_c002_00030600_0\.jpg"):
        build_data(config(root))


@pytest.mark.parametrize("folder", ["image_train", "image_query", "image_test"])
def test_missing_folder_names_it_and_the_layout(tmp_path: Path, folder: str) -> None:
    root = make_veri(tmp_path)
    for f in (root / folder).iterdir():
        f.unlink()
    (root / folder).rmdir()
    with pytest.raises(DataError, match=rf"{folder}: folder not found.*image_train/"):
        build_data(config(root))


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    for f in (root / "image_test").iterdir():
        f.unlink()
    (root / "image_test" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"image_test: no images"):
        build_data(config(root))


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: dataset folder not found"):
        build_data(config(tmp_path / "nowhere"))


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    bad = root / "image_train" / "0013_c020_00030605_5.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    b = build_data(config(root))
    with pytest.raises(DataError, match=r"0013_c020_00030605_5\.jpg: cannot read image"):
        b.train[5]
