"""Read and verify an artifact's manifest.json without torch.

This runs on edge devices before every benchmark, where only numpy and a
runtime are installed, so it imports nothing heavier than the standard
library. Every file the exporter wrote is listed with its sha256 and size; a
file that changed (one flipped byte), shrank or vanished makes the artifact
untrustworthy and raises :class:`~patrol_compress.errors.ArtifactError` naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patrol_compress.errors import ArtifactError
from patrol_compress.io import read_json, sha256_file

MANIFEST = "manifest.json"
_REQUIRED = ("split", "target", "precision", "files", "input_shape", "edge")


def read_manifest(artifact_dir: Path | str) -> dict[str, Any]:
    """Load manifest.json and check it has the fields every reader relies on."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest here; is this an export folder?")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest lacks {missing}")
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        raise ArtifactError(f"{path}: 'files' must be a non-empty object of name -> sha256/bytes")
    return manifest


def listed_path(root: Path, name: object) -> Path:
    """``root/name`` for a name the manifest lists, refused unless it stays inside ``root``.

    Symlinks are resolved first: a link from the artifact to a file elsewhere
    (``edge.onnx -> /somewhere/else.onnx``) is outside the folder too.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{MANIFEST} lists {str(name)[:60]!r}, which is not a file name")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{MANIFEST} lists '{name[:80]}', which is outside the artifact folder")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(
            f"{path}: a link to {path.resolve()}, which is outside the artifact folder; "
            "refusing to load it"
        )
    return path


def verify_manifest(artifact_dir: Path | str) -> dict[str, Any]:
    """Recompute every listed file's sha256; raise ArtifactError naming the first mismatch."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)
    for name, entry in manifest["files"].items():
        path = listed_path(root, name)
        if not isinstance(entry, dict):
            raise ArtifactError(f"{root / MANIFEST}: entry of '{name}' must be an object")
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(
                f"{path}: {size} bytes, {MANIFEST} says {entry.get('bytes')}; the file was changed"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(f"{path}: sha256 does not match {MANIFEST}; the file was changed")
    return manifest


@contextlib.contextmanager
def staged_copy(root: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """A private folder holding copies of exactly the files the manifest lists.

    Runtimes load from here, never from the artifact folder: a file the model
    refers to but the manifest does not list (ONNX external data moved into an
    unlisted ``weights.bin``) is simply absent, so it is never loaded, and each
    copy is hashed while it is written, so a file swapped after
    :func:`verify_manifest` is caught too.
    """
    with tempfile.TemporaryDirectory(prefix="patrol-bench-") as tmp:
        stage = Path(tmp)
        for name, entry in manifest["files"].items():
            source = listed_path(root, name)
            dest = stage / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(source, "rb") as src, open(dest, "wb") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != entry.get("sha256"):
                raise ArtifactError(
                    f"{source}: sha256 does not match {MANIFEST}; the file was changed"
                )
        yield stage
