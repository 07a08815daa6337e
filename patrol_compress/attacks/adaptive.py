"""The adaptive attack: the black-box attacker trained on what the deployed artifact emits.

The torch edge and the exported ``edge.onnx`` agree only to ~1e-6 in fp32 and
~1e-3 in fp16; BatchNorm is folded, kernels differ, and an INT8 edge rounds
every activation and sends uint8. A defense must not rely on such differences,
so this attack queries the artifact itself both to collect training features
and to attack the evaluation images, exactly as an attacker holding a deployed
device (or listening on its uplink) would: ``edge.onnx`` on ONNX Runtime's CPU
provider, or, for an artifact with no ONNX edge (OpenVINO INT8), ``edge.xml``
on OpenVINO's CPU plugin. An INT8 edge's uint8 is dequantized with the scale
and zero point its manifest records, as the cloud does: an affine map, which
the attacker's per-channel standardisation would undo anyway, and it keeps
``max_abs_diff_vs_torch`` in the torch edge's units.

Before anything runs, the artifact's ``manifest.json`` is verified (every
file's sha256), its split must be the one attacked, and the bytes handed to
the runtime are the ones that were hashed: an artifact changed on disk raises
:class:`~patrol_compress.errors.ArtifactError`. A self-consistent artifact
is not enough: it must be an export of the model attacked (the manifest's
``model_sha256``, else ``weights_sha256``: :func:`check_belongs`), and on
:data:`PROBE_IMAGES` evaluation images its edge must compute what the torch
edge computes, within what its precision allows (:func:`check_probe`). An
edge that outputs zeros would otherwise be attacked, fail, and read as
private. When the artifact folder does not exist it is exported first
(optional), into the same place
``patrol-compress export RUN --split K --target onnx`` would. The runtimes and
the exporters are imported only here.

Where the artifact computes the same function as the torch edge (an fp32
export whose features match within :data:`SAME_FUNCTION_RTOL` on the probe
images) and the adaptive decoders would be built and trained exactly as the
black-box ones, the black-box attack's trained decoders are reused: training
them again on features equal to 1e-6 would cost as long as the black-box
attack and measure the same thing. The family is still re-chosen on the
artifact's own validation features, and ``info["reused_blackbox_decoders"]``
says which path ran. An INT8 or fp16 artifact is always attacked by decoders
trained on its own outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
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
from patrol_compress.attacks.blackbox import (
    SHARED_INVERSION,
    Inversion,
    estimate_inversion,
    evaluation_pairs,
    inversion_result,
    run_inversion,
)
from patrol_compress.attacks.fit import AttackerData, Pairs, attacker_pairs
from patrol_compress.attacks.progress import PartEstimate
from patrol_compress.contracts import MANIFEST
from patrol_compress.edge_noise import draw_noise, edge_feed, noise_shape, ov_inputs
from patrol_compress.errors import ArtifactError, PatrolError, first_line
from patrol_compress.machine import check_thread_count
from patrol_compress.metrics.image import psnr_per_image
from patrol_compress.uplink.noise import given_noise_features, noisy_uplink

ORT_BATCH = 64
PROBE_IMAGES = 8
"""Evaluation images the artifact's edge and the torch edge are compared on."""
FP32_MAX_REL = 1e-4
"""fp32: largest |artifact - torch| over the largest |torch| (measured: 1e-6)."""
FP16_MAX_REL = 1e-2
"""fp16: the same (measured: 2e-3)."""
INT8_MAX_MEAN_STEPS = 12.0
"""uint8 edge: mean |artifact - torch| in steps of a uint8 code spanning the torch edge's
output on the probe (measured 2-9 on the tiny random-weight test models, whose INT8 twin
loses 8 rank-1 points; an edge sending zeros or a constant: 18-22). The step comes from
the torch output, not from the manifest's scale, which the artifact could inflate."""
INT8_MIN_CORRELATION = 0.5
"""uint8 edge: Pearson correlation with the torch edge's output (measured 0.79-0.99; a
constant edge has none), so a sparse output cannot pass as zeros."""


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


@dataclass(frozen=True)
class EdgeFiles:
    """The verified bytes of an artifact's edge and the runtime that runs them."""

    runtime: str
    blobs: dict[str, bytes]

    @property
    def sha256(self) -> str:
        """Of the model file (edge.onnx or edge.xml), as the manifest lists it."""
        return hashlib.sha256(next(iter(self.blobs.values()))).hexdigest()


def verified_edge(artifact: Path, split: int) -> tuple[EdgeFiles, dict[str, Any]]:
    """The edge's bytes after the manifest check; raises ArtifactError on any mismatch.

    ``edge.onnx`` when the manifest lists one (ONNX Runtime), else ``edge.xml``
    and ``edge.bin`` (OpenVINO: an INT8 OpenVINO artifact holds only the IR).
    """
    from patrol_compress.contracts import EDGE_BIN, EDGE_ONNX, EDGE_XML, MANIFEST, verify_manifest

    manifest = verify_manifest(artifact)
    if int(manifest["split"]) != split:
        raise ArtifactError(
            f"{artifact / MANIFEST}: artifact is for split {manifest['split']}, attacking split "
            f"{split}"
        )
    files = manifest["files"]
    if EDGE_ONNX in files:
        runtime, names = "onnxruntime", [EDGE_ONNX]
    elif EDGE_XML in files and EDGE_BIN in files:
        runtime, names = "openvino", [EDGE_XML, EDGE_BIN]
    else:
        raise ArtifactError(
            f"{artifact / MANIFEST}: lists neither {EDGE_ONNX} nor {EDGE_XML} + {EDGE_BIN} "
            "(target 'onnx' or 'openvino' needed)"
        )
    blobs = {}
    for name in names:
        blob = (artifact / name).read_bytes()
        if hashlib.sha256(blob).hexdigest() != files[name].get("sha256"):
            raise ArtifactError(f"{artifact / name}: sha256 does not match {MANIFEST}")
        blobs[name] = blob
    return EdgeFiles(runtime, blobs), manifest


Code = tuple[np.ndarray, np.ndarray]
"""How the cloud turns the uint8 an edge sends into values: ``real = code * mul + add``."""


def split_code(manifest: dict[str, Any], artifact: Path) -> Code | None:
    """The decoding of an edge that sends uint8; None for a float edge.

    An INT8 export codes the split tensor with one scale and zero point
    (``quantization.split_tensor``); a quantized uplink with a step and a lower
    end per channel (``uplink``).
    """
    if manifest.get("edge_output_dtype") != "uint8":
        return None
    uplink = manifest.get("uplink")
    if isinstance(uplink, dict):
        try:
            step = np.asarray(uplink["step"], dtype=np.float32).reshape(1, -1, 1, 1)
            lo = np.asarray(uplink["lo"], dtype=np.float32).reshape(1, -1, 1, 1)
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(
                f"{artifact / MANIFEST}: uplink lacks its per-channel step and lo"
            ) from None
        return step, lo
    q = manifest.get("quantization") or {}
    code = q.get("split_tensor")
    if not isinstance(code, dict):
        raise ArtifactError(
            f"{artifact / MANIFEST}: the edge sends uint8 but quantization.split_tensor "
            "(scale, zero point) is missing"
        )
    scale = np.float32(code["scale"])
    return np.asarray(scale), np.asarray(-scale * np.float32(code["zero_point"]))


EdgeRun = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
"""Runs the artifact's edge on images; a noisy uplink's edge also takes its standard normal
draw, or, given None, a fresh one from the runner's ``draw``: the attack reads what the
cloud receives, not noiseless codes."""
Draw = Callable[[tuple[int, ...]], np.ndarray]


def _check_inputs(inputs: list[tuple[str, Any]]) -> None:
    """Refuse, as an artifact's error, an edge that takes inputs the attack cannot feed."""
    try:
        noise_shape(inputs)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None


def ort_features(model_bytes: bytes, threads: int, draw: Draw = draw_noise) -> EdgeRun:
    """ONNX Runtime session over ``model_bytes`` (spinning off: it shares the CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.shape) for i in session.get_inputs()]
    _check_inputs(inputs)
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def run(x: np.ndarray, normal: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(session.run(None, edge_feed(inputs, x.astype(dtype), normal, draw))[0])

    return run


def ov_features(xml: bytes, weights: bytes, threads: int, draw: Draw = draw_noise) -> EdgeRun:
    """OpenVINO CPU over the verified IR bytes, with the f32 hint the export checked it under."""
    from patrol_compress.errors import import_optional

    ov = import_optional("openvino", "openvino", "the adaptive attack on an OpenVINO artifact")
    core = ov.Core()
    model = core.read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    dtype = compiled.input(0).get_element_type().to_dtype()
    inputs = ov_inputs(compiled.inputs)
    _check_inputs(inputs)

    def run(x: np.ndarray, normal: np.ndarray | None = None) -> np.ndarray:
        feed = edge_feed(inputs, x.astype(dtype), normal, draw)
        return np.array(request.infer(feed)[compiled.output(0)])

    return run


def edge_runner(edge: EdgeFiles, threads: int, draw: Draw = draw_noise) -> EdgeRun:
    """The artifact's edge on its runtime (:data:`EdgeRun`); ``draw`` makes a noisy edge's
    noise when none is given."""
    if edge.runtime == "onnxruntime":
        return ort_features(next(iter(edge.blobs.values())), threads, draw)
    xml, weights = edge.blobs.values()
    return ov_features(xml, weights, threads, draw)


def artifact_features(
    run: EdgeRun, code: Code | None, normal: np.ndarray | None = None
) -> FeatureFn:
    """Feature function backed by the artifact's runtime; uint8 is dequantized as the cloud does.
    ``normal`` fixes a noisy edge's draw for the images it is called with (the probe); None
    draws afresh."""

    def features(x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), ORT_BATCH):
            chunk = None if normal is None else normal[i : i + ORT_BATCH]
            sent = run(x[i : i + ORT_BATCH].numpy(), chunk)
            real = sent.astype(np.float32)
            if code is not None:
                real = real * code[0] + code[1]
            out.append(torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32)))
        return torch.cat(out).float()

    return features


def measurement_draw(seed: int) -> Draw:
    """The noise a noisy artifact is attacked with: standard normal from numpy's generator
    seeded with the attack's seed. The law is the deployer's (``draw_noise``); secrecy is
    not needed to measure, and a seeded draw makes the attack repeat, as the black-box
    attack on the torch edge (seeded torch generator) does."""
    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    return draw


def runtime_refused(artifact: Path, edge: EdgeFiles, exc: Exception) -> ArtifactError:
    """One line for a runtime that cannot load or run the verified edge (corrupt, truncated)."""
    detail = first_line(exc)[:160]
    return ArtifactError(
        f"{artifact / next(iter(edge.blobs))}: {edge.runtime} cannot run the edge ({detail}); "
        "a corrupt or truncated model file: re-export the artifact"
    )


def check_belongs(artifact: Path, manifest: dict[str, Any], ctx: AttackContext) -> None:
    """Refuse an artifact exported from another model than the one attacked.

    ``model_sha256`` (every export since it existed) hashes the exported
    model's tensors; an older ``export RUN`` recorded only ``weights_sha256``,
    the run's weights file, compared with the run's ``model.json``.
    """
    from patrol_compress.contracts import META_FILE
    from patrol_compress.io import read_json
    from patrol_compress.models.saved import state_sha256

    where = artifact / MANIFEST
    if manifest.get("model_sha256") is not None:
        if manifest["model_sha256"] != state_sha256(ctx.model):
            raise ArtifactError(
                f"{where}: model_sha256 is not that of the model attacked; this is an export "
                "of another model (another run, or this run before it changed): re-export it"
            )
        return
    meta_path = None if ctx.run_dir is None else Path(ctx.run_dir) / META_FILE
    if manifest.get("weights_sha256") is not None and meta_path is not None and meta_path.is_file():
        meta = read_json(meta_path)
        weights = meta.get("weights") if isinstance(meta, dict) else None
        if isinstance(weights, dict) and weights.get("sha256") == manifest["weights_sha256"]:
            return
        raise ArtifactError(
            f"{where}: weights_sha256 is not that of {meta_path}'s weights; this is an export "
            "of another model: re-export it"
        )
    raise ArtifactError(
        f"{where}: records no hash of the model it was exported from (model_sha256), so it "
        "cannot be checked against the model attacked; re-export it with patrol-compress export"
    )


def probe_difference(
    from_artifact: torch.Tensor, from_torch: torch.Tensor, uint8: bool
) -> tuple[float, str]:
    """How far the artifact's edge is from the torch edge, and in what unit.

    Float edges: max |diff| relative to max |torch|. uint8 edges: mean |diff| in
    steps of a uint8 code over the torch output's range (see
    :data:`INT8_MAX_MEAN_STEPS`), infinity below :data:`INT8_MIN_CORRELATION`.
    """
    diff = (from_artifact - from_torch).abs()
    if not uint8:
        scale = float(from_torch.abs().max()) or 1.0
        return float(diff.max()) / scale, "of the largest output"
    step = float(from_torch.max() - from_torch.min()) / 255 or 1.0
    a = (from_artifact - from_artifact.mean()).flatten()
    b = (from_torch - from_torch.mean()).flatten()
    norm = float(a.norm() * b.norm())
    corr = float(a @ b) / norm if norm > 0 else 0.0
    if not corr >= INT8_MIN_CORRELATION:
        return float("inf"), "quantization steps (mean)"
    return float(diff.mean()) / step, "quantization steps (mean)"


def check_probe(
    artifact: Path,
    precision: str,
    uint8: bool,
    from_artifact: torch.Tensor,
    from_torch: torch.Tensor,
) -> None:
    """Refuse an edge whose outputs are not the torch edge's within its precision."""
    found, what = probe_difference(from_artifact, from_torch, uint8)
    bounds = {"fp16": FP16_MAX_REL, "uint8": INT8_MAX_MEAN_STEPS}
    bound = bounds.get("uint8" if uint8 else precision, FP32_MAX_REL)
    if not found <= bound:  # NaN fails too
        shown = "uncorrelated outputs" if found == float("inf") else f"{found:.3g} {what}"
        raise ArtifactError(
            f"{artifact}: its edge differs from the run's model by {shown} on "
            f"{len(from_torch)} evaluation images (at most {bound:g} for {precision}); it does "
            "not compute this model's edge, refusing to attack it"
        )


SAME_FUNCTION_RTOL = 1e-4
"""An fp32 artifact whose features differ from the torch edge's by at most this fraction
of their largest magnitude (on the :data:`PROBE_IMAGES` probe images) computes the same
function: decoders trained on the torch edge's features are then reused instead of
trained again (ONNX Runtime and torch agree to ~1e-6 in fp32)."""
SHARED_ARTIFACT = "adaptive_artifact"
UPLINK_TIE_SHARE = 0.01
"""A quantized uplink's codes may differ from torch's by one step on this share of values
(rounding ties; the exporters' parity allows as much) and still count as the same function."""


@dataclass
class ArtifactSource:
    """The verified artifact, its feature function and how it relates to the torch edge."""

    path: Path
    exported_now: bool
    edge: EdgeFiles
    manifest: dict[str, Any]
    features: FeatureFn
    max_abs_diff: float
    """Largest |artifact - torch| feature difference on the probe images."""
    scale: float
    """Largest |torch| feature on the probe images."""
    mismatch_share: float = 0.0
    """Share of probe features that differ from the torch edge's at all."""

    @property
    def same_function(self) -> bool:
        """An fp32 edge within :data:`SAME_FUNCTION_RTOL`, or a quantized uplink whose decoded
        codes are the torch edge's but for boundary ties (at most one step, on at most
        ``UPLINK_TIE_SHARE`` of the values)."""
        dtype = self.manifest.get("edge_output_dtype")
        if dtype in (None, "float32"):
            return self.max_abs_diff <= SAME_FUNCTION_RTOL * max(self.scale, 1e-12)
        uplink = self.manifest.get("uplink")
        if dtype != "uint8" or not isinstance(uplink, dict):
            return False
        step = max(float(v) for v in uplink.get("step", [0.0])) if uplink.get("step") else 0.0
        return self.mismatch_share <= UPLINK_TIE_SHARE and self.max_abs_diff <= step * 1.001


def artifact_source(ctx: AttackContext) -> ArtifactSource:
    """Resolve, verify and probe the artifact once per attack (estimate and run share it)."""
    if SHARED_ARTIFACT in ctx.shared:
        found: ArtifactSource = ctx.shared[SHARED_ARTIFACT]
        return found
    cfg = ctx.config.adaptive
    check_thread_count(cfg.threads, "attack.adaptive.threads", "ONNX Runtime's default")
    artifact, exported = resolve_artifact(ctx)
    edge, manifest = verified_edge(artifact, ctx.split)
    check_belongs(artifact, manifest, ctx)
    code = split_code(manifest, artifact)
    probe = ctx.eval_images[:PROBE_IMAGES]
    draw = measurement_draw(ctx.config.seed)
    # A noisy uplink is probed with one draw fed to both edges: they must then agree.
    normal = None
    if noisy_uplink(ctx.edge):
        normal = draw((len(probe), *(int(d) for d in manifest.get("edge_output_shape") or ())))
    try:
        run = edge_runner(edge, cfg.threads, draw)
        features = artifact_features(run, code)
        from_artifact = artifact_features(run, code, normal)(probe)
    except PatrolError:
        raise
    except Exception as exc:  # runtimes raise their own types for a corrupt model
        raise runtime_refused(artifact, edge, exc) from None
    if normal is None:
        from_torch = torch_features(ctx.edge, ctx.device)(probe)
    else:
        from_torch = given_noise_features(ctx.edge, probe, torch.from_numpy(normal))
    if from_artifact.shape != from_torch.shape:
        raise ArtifactError(
            f"{artifact}: edge output {list(from_artifact.shape[1:])} differs from the run's "
            f"model at split {ctx.split} ({list(from_torch.shape[1:])}); wrong artifact?"
        )
    check_probe(
        artifact, str(manifest.get("precision")), code is not None, from_artifact, from_torch
    )
    source = ArtifactSource(
        artifact,
        exported,
        edge,
        manifest,
        features,
        float((from_artifact - from_torch).abs().max()),
        float(from_torch.abs().max()),
        float(
            ((from_artifact - from_torch).abs() > 1e-6 * float(from_torch.abs().max()))
            .float()
            .mean()
        ),
    )
    ctx.shared[SHARED_ARTIFACT] = source
    return source


def reusable(ctx: AttackContext, source: ArtifactSource, will_run_blackbox: bool) -> bool:
    """Whether the black-box decoders can stand in for training on the artifact's features.

    Only when the artifact computes the same function (fp32, within
    :data:`SAME_FUNCTION_RTOL`), the adaptive decoders would be built and
    trained exactly as the black-box ones (same decoder settings), and the
    black-box attack runs (or ran) in this attack.
    """
    if not source.same_function:
        return False
    from patrol_compress.config.privacy import BlackboxConfig

    own = BlackboxConfig.model_fields.keys()
    mine = {k: v for k, v in ctx.config.adaptive.model_dump().items() if k in own}
    return mine == ctx.config.blackbox.model_dump() and (
        will_run_blackbox or SHARED_INVERSION in ctx.shared
    )


def _reuse(ctx: AttackContext, source: ArtifactSource) -> tuple[torch.Tensor, dict[str, Any]]:
    """The black-box decoders on the artifact's features, the family re-chosen on them."""
    inversion: Inversion = ctx.shared[SHARED_INVERSION]
    val = Pairs(inversion.data.val.data, source.features, memory=True, cache=True)
    x_val = val.images if val.images is not None else torch.empty(0)
    records = {}
    for family in inversion.decoders:
        recon = inversion.decode(val, family)
        record = dict(inversion.records[family])
        record["best_val_psnr"] = float(psnr_per_image(x_val, recon).mean())
        records[family] = record
    chosen = max(records, key=lambda f: records[f]["best_val_psnr"])
    again = Inversion(inversion.data, inversion.decoders, records, chosen)
    recon, info = inversion_result(ctx, again, evaluation_pairs(ctx, source.features))
    info["reused_blackbox_decoders"] = True
    return recon, info


@ATTACKS.register("adaptive")
class AdaptiveAttack(Attack):
    """Black-box inversion trained and run on the exported edge's own outputs."""

    name = "adaptive"

    def _data(self, ctx: AttackContext, source: ArtifactSource) -> AttackerData:
        key = "adaptive_data"
        if key not in ctx.shared:
            ctx.shared[key] = attacker_pairs(
                ctx.attacker_data, source.features, ctx.config.adaptive, ctx.config.seed
            )
        data: AttackerData = ctx.shared[key]
        return data

    def estimate(self, ctx: AttackContext, done: set[str]) -> list[PartEstimate]:
        source = artifact_source(ctx)
        if reusable(ctx, source, ctx.shared.get("will_run_blackbox", False)):
            return []
        return estimate_inversion(
            ctx, self._data(ctx, source), ctx.config.adaptive, self.name, done
        )

    def run(self, ctx: AttackContext) -> Reconstruction:
        source = artifact_source(ctx)
        if reusable(ctx, source, False):
            recon, info = _reuse(ctx, source)
        else:
            inversion = run_inversion(ctx, self._data(ctx, source), ctx.config.adaptive, "adaptive")
            recon, info = inversion_result(ctx, inversion, evaluation_pairs(ctx, source.features))
            info["reused_blackbox_decoders"] = False
        info.update(
            {
                "artifact": str(source.path),
                "exported_now": source.exported_now,
                "precision": source.manifest.get("precision"),
                "target": source.manifest.get("target"),
                "runtime": source.edge.runtime,
                "sent_dtype": source.manifest.get("edge_output_dtype"),
                "bytes_sent": source.manifest.get("edge", {}).get("bytes_sent"),
                "edge_sha256": source.edge.sha256,
                "max_abs_diff_vs_torch": source.max_abs_diff,
                "max_abs_torch": source.scale,
            }
        )
        uplink = source.manifest.get("uplink")
        if isinstance(uplink, dict) and uplink.get("noise"):
            info["noise_draw"] = (
                f"standard normal from numpy's generator seeded {ctx.config.seed}, fresh per "
                "image (the deployer's law; seeded so the attack repeats)"
            )
        return Reconstruction(recon, info)
