"""Fashion-MNIST idx parsing on tiny real idx files (gzipped and plain)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from patrol_compress.data import build_data
from patrol_compress.data.fashion_mnist import DEBIAN_DIR, FILES
from patrol_compress.errors import DataError
from patrol_compress.recipe import DataConfig


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_split(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i, 4:24, 4 + i : 10 + i] = 255 - 10 * i  # a bright vertical bar
    return images, (np.arange(n) + offset) % 10


def make_files(root: Path, gz: bool = True, n_train: int = 12, n_test: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train, test = fake_split(n_train, 0), fake_split(n_test, 3)
    arrays = {
        "train_images": train[0],
        "train_labels": train[1],
        "test_images": test[0],
        "test_labels": test[1],
    }
    for key, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (root / f"{FILES[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (root / FILES[key]).write_bytes(data)
    return root


def config(root: Path, **kw: object) -> DataConfig:
    return DataConfig(kind="fashion-mnist", root=root, **{"image_size": 16, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("gz", [True, False])
def test_parses_idx_files_into_one_channel_images(tmp_path: Path, gz: bool) -> None:
    b = build_data(config(make_files(tmp_path / "fm", gz=gz)))
    assert b.task == "classification" and b.name == "fashion-mnist"
    assert b.num_classes == 10 and b.channels == 1 and b.test is not None
    assert (len(b.train), len(b.test)) == (12, 5)
    assert b.train.pids == [i % 10 for i in range(12)]
    assert b.test.pids == [3, 4, 5, 6, 7]
    assert set(b.train.camids) == {0}
    img, label, cam = b.train[1]
    assert img.shape == (1, 16, 16) and (label, cam) == (1, 0)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.max()) > 0.8 and float(img[0, 0, 0]) == 0.0  # bar kept, border black


def test_native_size_is_not_resampled(tmp_path: Path) -> None:
    root = make_files(tmp_path)
    b = build_data(config(root, image_size=28))
    img, _, _ = b.train[0]
    assert img.shape == (1, 28, 28)
    assert float(img[0, 10, 5]) == 1.0 and float(img[0, 10, 3]) == 0.0


def test_caps_take_a_deterministic_subset(tmp_path: Path) -> None:
    root = make_files(tmp_path)
    a = build_data(config(root, max_train_images=5, max_test_images=2))
    b = build_data(config(root, max_train_images=5, max_test_images=2))
    assert (len(a.train), len(a.test or [])) == (5, 2)
    assert a.train.pids == b.train.pids
    assert len(set(a.train.pids)) == 5  # distinct images, not repeats


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    tmp_path.joinpath("fm").mkdir()
    with pytest.raises(DataError) as err:
        build_data(config(tmp_path / "fm"))
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(DEBIAN_DIR) in message


def test_missing_root_says_how_to_get_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: .*apt-get install dataset-fashion-mnist"):
        build_data(config(tmp_path / "nowhere"))


def test_wrong_magic_number_names_the_file(tmp_path: Path) -> None:
    root = make_files(tmp_path, gz=False)
    path = root / FILES["train_labels"]
    path.write_bytes(idx_bytes(np.zeros((3, 2), dtype=np.uint8)))  # 2-d, not labels
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: expected idx magic number"):
        build_data(config(root))


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    root = make_files(tmp_path, gz=False)
    path = root / FILES["test_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte: header gives shape \(5, 28, 28\)"
    ):
        build_data(config(root))


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    root = make_files(tmp_path)
    (root / f"{FILES['train_images']}.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot read idx file"):
        build_data(config(root))


def test_label_count_mismatch_is_an_error(tmp_path: Path) -> None:
    root = make_files(tmp_path, gz=False)
    (root / FILES["train_labels"]).write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"3 labels but .*train-images-idx3-ubyte holds 12"):
        build_data(config(root))


@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_files_from_the_debian_package() -> None:
    b = build_data(config(DEBIAN_DIR, max_train_images=64, max_test_images=32))
    assert (len(b.train), len(b.test or [])) == (64, 32)
    assert set(b.train.pids) <= set(range(10))
