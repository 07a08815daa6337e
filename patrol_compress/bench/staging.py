"""Staging: a benchmark loads an artifact only from a private copy of what its manifest lists.

This runs on edge devices before every benchmark, where only numpy and a
runtime are installed, so it imports nothing heavier than the standard
library. Reading and verifying ``manifest.json`` (every listed file's sha256
and size; a changed, shrunk or vanished file raises
:class:`~patrol_compress.errors.ArtifactError` naming it) is part of the file
contracts (:func:`patrol_compress.contracts.verify_manifest`); this module
holds only the staging that follows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patrol_compress.contracts import MANIFEST, listed_path
from patrol_compress.errors import ArtifactError


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
