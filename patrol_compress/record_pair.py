"""A JSON record and the file it names, replaced together (``attack.json`` and its grid).

``attack.json`` names its reconstruction grid (``grid.file``, normally
``attack_grid.png``); the report shows that grid beside the record's numbers.
Replacing the two one after the other (``attack --force``) left, when killed
in between, a new grid beside the old numbers. Two files cannot be renamed in
one step, so the record is the commit point and the old record is first
pointed at a private link to its own grid:

1. the new grid is complete beside the old one under a temporary name;
2. the old grid is hard-linked to a backup name (``attack_grid.<8 hex>.png``)
   and the old record rewritten (atomically) to name that backup;
3. the new grid is renamed over ``attack_grid.png``: the old record does not
   name that file any more;
4. the new record is renamed over ``attack.json`` (the commit);
5. the backup goes.

Killed anywhere, the record on disk names a grid that belongs to it. A backup
left by a kill after step 4 is removed by the next replacement.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from patrol_compress.io import read_json, record_written, temp_name_prefix, write_json


def _backups(folder: Path, name: str) -> list[Path]:
    """Our backup copies of the companion ``name`` in ``folder`` (``stem.<8 hex>suffix``)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    pattern = re.compile(rf"^{re.escape(stem)}\.[0-9a-f]{{8}}{re.escape(suffix)}$")
    return [p for p in folder.glob(f"{stem}.*{suffix}") if pattern.match(p.name)]


def _old_companion(record_path: Path, key: str, default: str) -> str | None:
    """The file the existing record names under ``key`` (``grid`` -> ``file``), if any."""
    if not record_path.is_file():
        return None
    with contextlib.suppress(Exception):  # a corrupt old record has no grid to protect
        old = read_json(record_path)
        section = old.get(key) if isinstance(old, dict) else None
        if section is None:
            return default
        name = section.get("file") if isinstance(section, dict) else None
        return name if isinstance(name, str) else None
    return None


def _point_old_record_at_backup(folder: Path, record_name: str, key: str, name: str) -> None:
    """Step 2: the old record names a private hard link to its own grid."""
    record_path = folder / record_name
    if _old_companion(record_path, key, name) != name or not (folder / name).is_file():
        return
    stem, suffix = Path(name).stem, Path(name).suffix
    backup = folder / f"{stem}.{secrets.token_hex(4)}{suffix}"
    try:
        os.link(folder / name, backup)
    except OSError:
        shutil.copy2(folder / name, backup)
    record_written(backup)
    old = read_json(record_path)
    section = old.get(key) if isinstance(old.get(key), dict) else {}
    old[key] = {**section, "file": backup.name}
    write_json(record_path, old)


def replace_pair(
    folder: Path,
    record_name: str,
    record: dict[str, Any],
    key: str,
    draw: Callable[[Path], object],
) -> None:
    """Install ``record`` as ``folder/record_name`` and the file it names, drawn by ``draw``.

    ``record[key]["file"]`` is the companion's name in ``folder``; ``draw(path)``
    writes the complete companion to ``path`` (a temporary name beside it).
    See the module docstring for the order and why.
    """
    name = record[key]["file"]
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(name), suffix=".tmp", dir=folder)
    os.close(fd)
    new_file = Path(tmp)
    try:
        draw(new_file)
        stale = _backups(folder, name)
        _point_old_record_at_backup(folder, record_name, key, name)
        os.replace(new_file, folder / name)
        record_written(folder / name)
        write_json(folder / record_name, record)
        for backup in [*stale, *_backups(folder, name)]:
            backup.unlink(missing_ok=True)
    finally:
        new_file.unlink(missing_ok=True)
