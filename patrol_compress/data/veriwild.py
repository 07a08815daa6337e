"""``veri-wild``: the VeRi-Wild vehicle re-identification dataset.

Layout under ``data.root``::

    images/<vid>/<imgid>.jpg
    train_test_split/train_list.txt            lines "<vid>/<imgid>", e.g. 00001/000001
    train_test_split/test_<N>.txt              N = data.veriwild_test_size (3000/5000/10000)
    train_test_split/test_<N>_query.txt
    train_test_split/vehicle_info.txt          "<vid>/<imgid>;<camid>;<time>;<model>;<type>;<color>"

Camera ids exist only in ``vehicle_info.txt`` (with or without its header
line, which starts with "id"). The VeRi-Wild protocol lists the query images
inside ``test_<N>.txt`` too, so the gallery is the test list *minus* the query
images; otherwise every query would find itself at rank 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data import DATASETS
from patrol_compress.data.base import DataBundle, FileDataset, dataset_root, relabel
from patrol_compress.errors import DataError

LIST_LINE = re.compile(r"^(?P<vid>\d+)/(?P<img>[^/\s;]+?)(?:\.jpe?g)?$", re.IGNORECASE)
EXPECTED_LINE = "'<vid>/<imgid>', e.g. 00001/000001"
LAYOUT = "images/<vid>/<imgid>.jpg and train_test_split/*.txt lists"
INFO_NAME = "vehicle_info.txt"

Entry = tuple[str, int]  # ("<vid>/<imgid>", vid)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: list file not found; expected VeRi-Wild's {LAYOUT}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read list file ({type(exc).__name__})") from None


def read_list(path: Path) -> list[Entry]:
    """Entries of a split list, in file order; blank lines are ignored."""
    entries: list[Entry] = []
    for lineno, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        match = LIST_LINE.match(line)
        if match is None:
            raise DataError(
                f"{path}:{lineno}: expected a line {EXPECTED_LINE}, found {line[:60]!r}"
            )
        entries.append((f"{match['vid']}/{match['img']}", int(match["vid"])))
    if not entries:
        raise DataError(f"{path}: list file has no entries; expected lines {EXPECTED_LINE}")
    return entries


def read_cameras(path: Path) -> dict[str, int]:
    """``"<vid>/<imgid>" -> camera id`` from ``vehicle_info.txt``."""
    if not path.is_file():
        raise DataError(
            f"{path}: not found; VeRi-Wild's camera ids come from this file "
            "(lines '<vid>/<imgid>;<camid>;<time>;<model>;<type>;<color>')"
        )
    cams: dict[str, int] = {}
    for lineno, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line or (lineno == 1 and line.lower().startswith("id")):
            continue
        fields = line.split(";")
        key = fields[0].strip()
        key = key[:-4] if key.lower().endswith(".jpg") else key
        try:
            cams[key] = int(fields[1])
        except (IndexError, ValueError):
            raise DataError(
                f"{path}:{lineno}: expected '<vid>/<imgid>;<camid>;...' with an integer "
                f"camera id, found {line[:60]!r}"
            ) from None
    return cams


def _dataset(
    entries: list[Entry], cams: dict[str, int], root: Path, info: Path, size: int, relabelled: bool
) -> tuple[FileDataset, int]:
    missing = [key for key, _ in entries if key not in cams]
    if missing:
        raise DataError(
            f"{info}: no camera id for {len(missing)} listed image(s), e.g. {missing[0]}"
        )
    paths = [root / "images" / f"{key}.jpg" for key, _ in entries]
    first = paths[0]
    if not first.is_file():
        raise DataError(f"{first}: image file not found; expected VeRi-Wild's {LAYOUT}")
    pids = [vid for _, vid in entries]
    n = len(set(pids))
    if relabelled:
        pids, n = relabel(pids)
    return FileDataset(paths, pids, [cams[key] for key, _ in entries], size), n


@DATASETS.register("veri-wild")
def load_veriwild(config: DataConfig) -> DataBundle:
    """Re-id bundle for the chosen test size; train identities relabelled 0..n-1."""
    root = dataset_root(config)
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'}: folder not found; expected VeRi-Wild's {LAYOUT}")
    lists = root / "train_test_split"
    n = config.veriwild_test_size
    train = read_list(lists / "train_list.txt")
    test = read_list(lists / f"test_{n}.txt")
    query = read_list(lists / f"test_{n}_query.txt")
    info = lists / INFO_NAME
    cams = read_cameras(info)
    query_keys = {key for key, _ in query}
    gallery = [entry for entry in test if entry[0] not in query_keys]
    if not gallery:
        raise DataError(
            f"{lists / f'test_{n}.txt'}: no gallery images left after removing the "
            f"{len(query_keys)} query images of test_{n}_query.txt"
        )
    size = config.image_size
    train_ds, num_classes = _dataset(train, cams, root, info, size, relabelled=True)
    query_ds, _ = _dataset(query, cams, root, info, size, relabelled=False)
    gallery_ds, _ = _dataset(gallery, cams, root, info, size, relabelled=False)
    return DataBundle(
        task="reid",
        name="veri-wild",
        train=train_ds,
        query=query_ds,
        gallery=gallery_ds,
        num_classes=num_classes,
    )
