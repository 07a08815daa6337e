"""Finished parts of an attack, kept on disk so ``attack --resume`` continues after an interrupt.

A part is one unit of work an attack finishes on its own: a trained decoder
family (its weights and training record) or a white-box start (its
validation curve and, once chosen, its reconstructions of the evaluation
images). Each is written as it finishes into ``OUT/.attack-parts/``: tensors
as safetensors (no pickle, like every weight file here), the record as JSON,
both atomically.

Parts are only valid for the attack that made them, so the folder carries a
*fingerprint* of everything a part depends on: the attacked model's weights,
the split, the attack settings, the evaluation images, the attacker's data and
this package's version. ``--resume`` with a different fingerprint is refused
in one line (the parts would be silently wrong); a run without ``--resume``
starts afresh and clears the folder. Once ``attack.json`` is written the
folder is removed: ``attack.json`` holds everything the parts were for.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from patrol_compress.errors import ArtifactError, PatrolError
from patrol_compress.io import atomic_path, read_json, write_json

PARTS_DIR = ".attack-parts"
FINGERPRINT_FILE = "fingerprint.json"


class ResumeError(PatrolError):
    """``--resume`` cannot continue: the finished parts belong to another attack."""


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, dtypes and values), in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(f"{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
        h.update(_bytes(tensor))
    return h.hexdigest()


def _bytes(x: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (any dtype, any shape, 0-d included)."""
    t = x.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(_bytes(x)).hexdigest()


def fingerprint(**facts: Any) -> str:
    """sha256 of ``facts`` as canonical JSON."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


class PartStore:
    """The finished parts of one attack in ``folder/.attack-parts`` (or none, in memory only)."""

    def __init__(self, folder: Path | None, key: str, resume: bool) -> None:
        self.root = None if folder is None else Path(folder) / PARTS_DIR
        self.key = key
        if self.root is None:
            return
        stamp = self.root / FINGERPRINT_FILE
        if resume and stamp.is_file():
            found = read_json(stamp)
            if not isinstance(found, dict) or found.get("fingerprint") != key:
                raise ResumeError(
                    f"{self.root}: the finished parts were made for another model, split, "
                    "attack setting or data; rerun without --resume to start over"
                )
            return
        self.clear()
        write_json(stamp, {"fingerprint": key})

    def names(self) -> list[str]:
        """Finished parts, by name."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if p.name != FINGERPRINT_FILE)

    def _files(self, name: str) -> tuple[Path, Path]:
        if self.root is None:
            raise ArtifactError("no part store folder")
        safe = name.replace("/", "__")
        return self.root / f"{safe}.json", self.root / f"{safe}.safetensors"

    def load(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """(record, tensors) of a finished part, or None."""
        if self.root is None:
            return None
        record_path, tensor_path = self._files(name)
        if not record_path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        record = read_json(record_path)
        try:
            tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(
                f"{tensor_path}: unreadable ({exc}); rerun without --resume"
            ) from None
        if not isinstance(record, dict):
            raise ArtifactError(f"{record_path}: not a part record; rerun without --resume")
        return record, tensors

    def save(self, name: str, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Write a finished part: tensors first, the record last (its presence marks it done)."""
        if self.root is None:
            return
        from safetensors.torch import save_file

        record_path, tensor_path = self._files(name)
        if tensors:
            with atomic_path(tensor_path) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        write_json(record_path, record)

    def clear(self) -> None:
        """Remove the parts folder (a real folder of ours; a symlink is only unlinked)."""
        if self.root is None:
            return
        if self.root.is_symlink():
            self.root.unlink()
        elif self.root.is_dir():
            shutil.rmtree(self.root)
