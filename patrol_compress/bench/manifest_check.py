"""Read and verify an artifact's manifest.json without torch.

This runs on edge devices before every benchmark, where only numpy and a
runtime are installed, so it imports nothing heavier than the standard
library. Every file the exporter wrote is listed with its sha256 and size; a
file that changed (one flipped byte), shrank or vanished makes the artifact
untrustworthy and raises :class:`~patrol_compress.errors.ArtifactError` naming it.
"""

from __future__ import annotations

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


def verify_manifest(artifact_dir: Path | str) -> dict[str, Any]:
    """Recompute every listed file's sha256; raise ArtifactError naming the first mismatch."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)
    for name, entry in manifest["files"].items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{MANIFEST} lists '{name}', which is outside the artifact folder")
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
