"""Class-per-folder classification loader on small real JPEG/PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from patrol_compress.data import build_data
from patrol_compress.data.base import FileDataset
from patrol_compress.errors import DataError
from patrol_compress.recipe import DataConfig

TRAIN = {"cat": 4, "dog": 3, "bird": 2}
TEST = {"dog": 2, "cat": 1}


def make_folder(root: Path, layout: dict[str, dict[str, int]] | None = None) -> Path:
    layout = layout or {"train": TRAIN, "test": TEST}
    for split, classes in layout.items():
        for c, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if i % 2:  # a mix of grey PNGs and colour JPEGs
                    Image.new("L", (12, 18), 40 * c).save(folder / f"{i}.png")
                else:
                    Image.new("RGB", (18, 12), (40 * c, 9 * i, 70)).save(folder / f"{i}.jpg")
            (folder / "notes.txt").write_text("not an image")
    return root


def config(root: Path, **kw: object) -> DataConfig:
    return DataConfig(kind="imagefolder", root=root, image_size=16, **kw)  # type: ignore[arg-type]


def test_labels_follow_sorted_train_class_names(tmp_path: Path) -> None:
    b = build_data(config(make_folder(tmp_path)))
    assert b.task == "classification" and b.name == "imagefolder"
    assert b.test is not None and b.query is None
    assert b.num_classes == 3  # bird=0, cat=1, dog=2
    assert b.train.pids == [0] * 2 + [1] * 4 + [2] * 3
    assert b.test.pids == [1] + [2] * 2
    assert set(b.train.camids) == {0} and set(b.test.camids) == {0}


def test_items_are_three_channel_float_tensors(tmp_path: Path) -> None:
    b = build_data(config(make_folder(tmp_path)))
    for i in (0, 1):  # a JPEG and a grey PNG
        img, _, _ = b.train[i]
        assert img.shape == (3, 16, 16)
        assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0


def test_test_class_missing_from_train_is_an_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"train": TRAIN, "test": {"cat": 1, "zebra": 1}})
    with pytest.raises(DataError, match=r"test classes must also be train classes.*zebra"):
        build_data(config(root))


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_split_folder_is_named(tmp_path: Path, split: str) -> None:
    other = "test" if split == "train" else "train"
    root = make_folder(tmp_path, {other: TRAIN})
    with pytest.raises(DataError, match=rf"{split}: folder not found.*root/train/<class>"):
        build_data(config(root))


def test_class_folder_without_images_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder has no images"):
        build_data(config(root))


def test_caps_take_a_deterministic_subset(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    full = build_data(config(root))
    a = build_data(config(root, max_train_images=4, max_test_images=2))
    b = build_data(config(root, max_train_images=4, max_test_images=2))
    c = build_data(config(root, max_train_images=4, seed=3))
    assert isinstance(a.train, FileDataset) and isinstance(full.train, FileDataset)
    assert isinstance(b.train, FileDataset) and isinstance(c.train, FileDataset)
    assert len(a.train) == 4 and len(a.test or []) == 2
    assert a.train.paths == b.train.paths
    assert set(a.train.paths) <= set(full.train.paths)
    assert a.train.paths != c.train.paths
    assert a.num_classes == 3  # capping never drops a class label


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    bad = root / "train" / "cat" / "0.jpg"
    bad.write_bytes(b"not a jpeg")
    b = build_data(config(root))
    with pytest.raises(DataError, match=r"cat/0\.jpg: cannot read image"):
        b.train[2]
