"""VeRi-Wild loader on a small real layout: images, split lists and vehicle_info.txt."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from patrol_compress.data import build_data
from patrol_compress.errors import DataError
from patrol_compress.recipe import DataConfig

# "<vid>/<imgid>" -> camera id
CAMERAS = {
    "00001/000001": 11,
    "00001/000002": 12,
    "00003/000010": 11,
    "00003/000011": 40,
    "00020/000100": 5,
    "00020/000101": 6,
    "00020/000102": 7,
    "00021/000200": 5,
    "00021/000201": 9,
}
TRAIN = ["00001/000001", "00001/000002", "00003/000010", "00003/000011"]
TEST = ["00020/000100", "00020/000101", "00020/000102", "00021/000200", "00021/000201"]
QUERY = ["00020/000101", "00021/000200"]
HEADER = "id/image;Camera ID;Time;Model;Type;Color"


def make_veriwild(root: Path, header: bool = True, size: int = 3000) -> Path:
    for n, key in enumerate(CAMERAS):
        path = root / "images" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20), (10 * n, 80, 200 - 10 * n)).save(path, format="JPEG")
    lists = root / "train_test_split"
    lists.mkdir(parents=True)
    (lists / "train_list.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / f"test_{size}.txt").write_text("\n".join(TEST) + "\n\n")
    (lists / f"test_{size}_query.txt").write_text("\n".join(QUERY))
    rows = [
        f"{k};{cam};2018-03-11 09:14:{i:02d};Buick Excelle;sedan;white"
        for i, (k, cam) in enumerate(CAMERAS.items())
    ]
    (lists / "vehicle_info.txt").write_text("\n".join(([HEADER] if header else []) + rows) + "\n")
    return root


def config(root: Path, **kw: object) -> DataConfig:
    return DataConfig(kind="veri-wild", root=root, image_size=24, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", [True, False])
def test_splits_cameras_and_gallery_without_queries(tmp_path: Path, header: bool) -> None:
    b = build_data(config(make_veriwild(tmp_path, header=header)))
    assert b.task == "reid" and b.name == "veri-wild"
    assert b.query is not None and b.gallery is not None
    assert (len(b.train), len(b.query), len(b.gallery)) == (4, 2, 3)
    assert b.num_classes == 2 and b.train.pids == [0, 0, 1, 1]
    assert b.train.camids == [11, 12, 11, 40]
    assert b.query.pids == [20, 21] and b.query.camids == [6, 5]
    assert b.gallery.pids == [20, 20, 21] and b.gallery.camids == [5, 7, 9]
    gallery_files = {p.name for p in b.gallery.paths}  # type: ignore[attr-defined]
    assert gallery_files.isdisjoint({"000101.jpg", "000200.jpg"})


def test_items_are_resized_float_tensors(tmp_path: Path) -> None:
    b = build_data(config(make_veriwild(tmp_path)))
    img, pid, cam = b.train[2]
    assert img.shape == (3, 24, 24)
    assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0
    assert (pid, cam) == (1, 11)


def test_test_size_picks_the_matching_lists(tmp_path: Path) -> None:
    root = make_veriwild(tmp_path, size=5000)
    assert len(build_data(config(root, veriwild_test_size=5000)).gallery or []) == 3
    with pytest.raises(DataError, match=r"test_3000\.txt: list file not found"):
        build_data(config(root))


@pytest.mark.parametrize(
    "name", ["train_list.txt", "test_3000.txt", "test_3000_query.txt", "vehicle_info.txt"]
)
def test_missing_list_files_are_named(tmp_path: Path, name: str) -> None:
    root = make_veriwild(tmp_path)
    (root / "train_test_split" / name).unlink()
    with pytest.raises(DataError, match=rf"{name}: .*not found"):
        build_data(config(root))


def test_missing_images_folder_is_named(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError, match=r"images: folder not found"):
        build_data(config(root))


def test_malformed_list_line_names_file_and_line(tmp_path: Path) -> None:
    root = make_veriwild(tmp_path)
    (root / "train_test_split" / "train_list.txt").write_text("00001/000001\nnot a line\n")
    with pytest.raises(DataError, match=r"train_list\.txt:2: expected a line"):
        build_data(config(root))


def test_malformed_camera_id_names_file_and_line(tmp_path: Path) -> None:
    root = make_veriwild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    info.write_text(info.read_text().replace(";11;", ";eleven;", 1))
    with pytest.raises(DataError, match=r"vehicle_info\.txt:2: .*integer camera id"):
        build_data(config(root))


def test_image_without_camera_id_is_an_error(tmp_path: Path) -> None:
    root = make_veriwild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    lines = [ln for ln in info.read_text().splitlines() if not ln.startswith("00003/000011")]
    info.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"vehicle_info\.txt: no camera id .*00003/000011"):
        build_data(config(root))


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_veriwild(tmp_path)
    (root / "images" / "00003" / "000011.jpg").write_bytes(b"garbage")
    b = build_data(config(root))
    with pytest.raises(DataError, match=r"00003/000011\.jpg: cannot read image"):
        b.train[3]
