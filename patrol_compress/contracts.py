"""The file contracts: every file name patrol-compress writes or reads, defined once.

Torch-free (a test checks that importing this module loads no torch): the
benchmark on an edge device, the report and the CLI's argument checks read
these names without the training stack.

A run folder (``prune``/``train``) holds the resolved recipe, the stage ledger,
versions, ``metrics.json`` and the final model; a prune run adds the
sub-folders below. An export folder holds the edge/cloud partition files and
``manifest.json`` (written last, so a folder with a manifest is complete). An
attack writes ``attack.json`` and its reconstruction grid into its output
folder; ``defend`` one such folder per point plus ``defenses.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patrol_compress.errors import ArtifactError
from patrol_compress.io import read_json, sha256_file

# --- a run folder -----------------------------------------------------------
STAGES_FILE = "stages.json"
"""Each finished stage with its wall time and recipe sha256 (resume reads it)."""
RECIPE_FILE = "recipe.resolved.yaml"
"""The recipe with every default filled in, as the run used it."""
VERSIONS_FILE = "versions.json"
METRICS_FILE = "metrics.json"
"""Accuracy before/after, edge size, budget, stage times (``prune``/``train``)."""
SAMPLES_FILE = "samples.png"
"""A grid of training images, written by the data stage."""
MODEL_FILE = "model.safetensors"
"""A saved model's weights (``run.save_run_model``)."""
META_FILE = "model.json"
"""A saved model's description: config, classes, input shape, weights sha256, removal."""
ACCURACY_FILE = "accuracy.json"
"""Accuracy of the model in the same folder (``target/``, ``pruned/``)."""
PATROL_SUMMARY_FILE = "summary.json"
"""PATROL's per-epoch history, surrogate PSNR and mask sparsity (in ``patrol/``)."""
MASKED_WEIGHTS_FILE = "masked.safetensors"
"""The masked network after PATROL fine-tuning, before removal (in ``patrol/``)."""
CHECKPOINT_FILE = "last.json"
"""A training stage's latest per-epoch checkpoint description (in ``checkpoints/<stage>/``)."""

TARGET_DIR = "target"
PATROL_DIR = "patrol"
PRUNED_DIR = "pruned"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
DEFENSES_DIR = "defenses"

# --- an export folder ---------------------------------------------------------
MANIFEST = "manifest.json"
"""Every file of the artifact with its sha256 and size, plus shapes and costs."""
EDGE_ONNX = "edge.onnx"
CLOUD_ONNX = "cloud.onnx"
EDGE_XML = "edge.xml"
EDGE_BIN = "edge.bin"
CLOUD_XML = "cloud.xml"
CLOUD_BIN = "cloud.bin"
EDGE_ENGINE = "edge.engine"
CLOUD_ENGINE = "cloud.engine"
TIMING_CACHE = "trt.timing.cache"
"""TensorRT's timing cache, kept next to the engines and reused by the next build."""

# --- attack results -------------------------------------------------------------
ATTACK_FILE = "attack.json"
"""One attacked model: scores, floors, accuracy, edge size; one point of the report."""
ATTACK_GRID = "attack_grid.png"
"""Originals and reconstructions, one row per attack (named in attack.json's ``grid``)."""
DEFENSES_FILE = "defenses.json"
"""``defend``'s list of every point of its sweep."""


# --- reading an export folder -----------------------------------------------------
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
