"""The adaptive attack: the black-box attacker trained on what the deployed artifact emits.

The torch edge and the exported ``edge.onnx`` agree only to ~1e-6 in fp32 and
~1e-3 in fp16; BatchNorm is folded, kernels differ. A defense must not rely on
such differences, so this attack queries the artifact itself (ONNX Runtime,
CPU provider) both to collect training features and to attack the evaluation
images, exactly as an attacker holding a deployed device would.

Before anything runs, the artifact's ``manifest.json`` is verified (every
file's sha256), its split must be the one attacked, and the ``edge.onnx``
bytes handed to ONNX Runtime are the ones that were hashed: an artifact
changed on disk raises :class:`~patrol_compress.errors.ArtifactError`. When
the artifact folder does not exist it is exported first (optional), into the
same place ``patrol-compress export RUN --split K --target onnx`` would.
onnxruntime and the exporters are imported only here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patrol_compress.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    FeatureFn,
    Reconstruction,
    torch_features,
)
from patrol_compress.attacks.blackbox import run_inversion
from patrol_compress.errors import ArtifactError

ORT_BATCH = 64


def default_artifact(run_dir: Path, split: int) -> Path:
    return Path(run_dir) / "export" / f"onnx-split{split}-fp32"


def resolve_artifact(ctx: AttackContext) -> tuple[Path, bool]:
    """The artifact folder to attack, exporting it first when allowed; (path, exported now)."""
    cfg = ctx.config.adaptive
    if cfg.artifact is not None:
        path = Path(cfg.artifact)
    elif ctx.run_dir is not None:
        path = default_artifact(ctx.run_dir, ctx.split)
    else:
        raise ArtifactError("adaptive.artifact is not set and there is no run directory")
    if path.exists():
        return path, False
    if not cfg.export_if_missing:
        raise ArtifactError(
            f"{path}: no exported edge here; run patrol-compress export RUN --split {ctx.split} "
            "--target onnx, or set adaptive.export_if_missing"
        )
    from patrol_compress.exporters import export_partitions

    export_partitions(
        ctx.model,
        ctx.split,
        path,
        "onnx",
        "fp32",
        ctx.input_shape,
        extra_manifest={"run": str(ctx.run_dir), "exported_by": "attack adaptive"},
    )
    return path, True


def verified_edge(artifact: Path, split: int) -> tuple[bytes, dict[str, Any]]:
    """``edge.onnx`` bytes after the manifest check; raises ArtifactError on any mismatch."""
    from patrol_compress.contracts import EDGE_ONNX, MANIFEST, verify_manifest

    manifest = verify_manifest(artifact)
    if int(manifest["split"]) != split:
        raise ArtifactError(
            f"{artifact / MANIFEST}: artifact is for split {manifest['split']}, attacking split "
            f"{split}"
        )
    entry = manifest["files"].get(EDGE_ONNX)
    if entry is None:
        raise ArtifactError(f"{artifact / MANIFEST}: lists no {EDGE_ONNX} (target 'onnx' needed)")
    blob = (artifact / EDGE_ONNX).read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise ArtifactError(f"{artifact / EDGE_ONNX}: sha256 does not match {MANIFEST}")
    return blob, manifest


def ort_features(model_bytes: bytes, threads: int) -> FeatureFn:
    """Feature function backed by an ONNX Runtime session (spinning off: it shares the CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def features(x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), ORT_BATCH):
            batch = x[i : i + ORT_BATCH].numpy().astype(dtype)
            out.append(torch.from_numpy(np.asarray(session.run(None, {inp.name: batch})[0])))
        return torch.cat(out).float()

    return features


@ATTACKS.register("adaptive")
class AdaptiveAttack(Attack):
    """Black-box inversion trained and run on the exported edge's own outputs."""

    name = "adaptive"

    def run(self, ctx: AttackContext) -> Reconstruction:
        cfg = ctx.config.adaptive
        artifact, exported = resolve_artifact(ctx)
        blob, manifest = verified_edge(artifact, ctx.split)
        features = ort_features(blob, cfg.threads)
        probe = ctx.eval_images[:2]
        from_ort = features(probe)
        from_torch = torch_features(ctx.edge, ctx.device)(probe)
        if from_ort.shape != from_torch.shape:
            raise ArtifactError(
                f"{artifact}: edge output {list(from_ort.shape[1:])} differs from the run's "
                f"model at split {ctx.split} ({list(from_torch.shape[1:])}); wrong artifact?"
            )
        recon, info = run_inversion(ctx, features, cfg, "adaptive")
        info.update(
            {
                "artifact": str(artifact),
                "exported_now": exported,
                "precision": manifest.get("precision"),
                "edge_sha256": hashlib.sha256(blob).hexdigest(),
                "max_abs_diff_vs_torch": float((from_ort - from_torch).abs().max()),
            }
        )
        return Reconstruction(recon, info)
