"""``export_partitions``: the one entry point that turns a BlockNet into a checked artifact.

Everything is written into a hidden work folder beside ``out_dir`` and moved
into place only after every check passed, so a failed export (a parity
mismatch, a missing backend, a crash) leaves no artifact behind and never
damages an existing one. The model is deep-copied and put in eval mode before
splitting: the caller's model, its train/eval flags and its BatchNorm
statistics are never touched (the exporter would flip shared BNs; see
``docs/measurements.md``, "Splitting and export").
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from patrol_compress.errors import ExportError, OutputExistsError, first_line
from patrol_compress.io import record_written, swap_in, temp_name_prefix, write_json
from patrol_compress.models import BlockNet
from patrol_compress.models import split as split_model
from patrol_compress.models.saved import state_sha256

from .base import EXPORTERS, PRECISIONS, ExportJob, Precision, Target
from .int8 import Int8Data, require_data
from .manifest import MANIFEST, build_manifest

PARITY_BATCH = 2
_RESERVED = (
    "split",
    "target",
    "precision",
    "files",
    "input_shape",
    "edge",
    "cloud",
    "versions",
    "quantization",
    "model_sha256",
)


def _validate(
    precision: str, input_shape: Sequence[int], opset: int, extra: dict[str, Any] | None
) -> tuple[int, int, int]:
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {list(PRECISIONS)}, found {precision!r}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(
            f"input_shape must be (C, H, W) with positive sizes, found {list(input_shape)}"
        )
    if not 13 <= opset <= 21:
        raise ExportError(f"opset must be between 13 and 21, found {opset}")
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ExportError(f"extra_manifest may not override manifest fields {clash}")
    return shape[0], shape[1], shape[2]


def check_target(target: str, precision: str) -> Target:
    """The target, once it can write ``precision`` here (backend installed); fails fast."""
    exporter = EXPORTERS.get(target)
    if precision not in exporter.precisions:
        raise ExportError(
            f"target {target!r} cannot write {precision}; it writes {list(exporter.precisions)}"
        )
    exporter.check_available()
    if precision == "int8" and target == "openvino":
        from .openvino_int8 import import_nncf

        import_nncf()
    return exporter


def _check_int8(data: Int8Data, shape: tuple[int, int, int]) -> None:
    """Calibration images must be what the model takes; checked before any export work."""
    calib = data.calibration
    if calib.ndim != 4 or tuple(calib.shape[1:]) != shape or len(calib) == 0:
        raise ExportError(
            f"INT8 calibration images are {list(calib.shape)}, the model takes N x {list(shape)}"
        )
    if not np.isfinite(calib).all():
        raise ExportError("INT8 calibration images hold NaN/Inf")


class UplinkCloud(torch.nn.Module):
    """The cloud partition of a quantized uplink: decode the received codes, then the cloud."""

    def __init__(self, decode: torch.nn.Module, cloud: torch.nn.Module) -> None:
        super().__init__()
        self.decode = decode
        self.cloud = cloud

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.cloud(self.decode(codes))


def check_uplink_export(model: BlockNet, split: int, target: str, precision: str) -> None:
    """A quantized uplink is exported only at its own split, by a target that carries codes.

    Why here, before the target's own checks: the bound (``bits`` x channels x
    positions per image) holds only for what crosses where the quantizer sits.
    Split deeper and the codes would be made and decoded inside the edge; split
    shallower and the edge would send unquantized features; either way the export
    would send more than the run's bound and the manifest would not say so. INT8
    re-quantizes the cloud and the uplink's decode with it, and a target without
    :attr:`~.base.Target.uplink_codes` cannot take the uint8 codes; both are refused
    first, so a user is not told to install a backend that could not build the
    model anyway. A noisy uplink (``patrol.uplink.noise``) exports like any other:
    its edge takes the noise as a second input (:mod:`patrol_compress.uplink.noise`).
    """
    from patrol_compress.uplink import find_uplink, uplink_split

    quant = find_uplink(model)
    if quant is None:
        return
    at = uplink_split(model)
    if split != at:
        raise ExportError(
            f"the model's uplink is quantized to {quant.bits} bits at split {at}: export at split "
            f"{at}, not {split} (elsewhere the edge would send more than the uplink's bound)"
        )
    if precision == "int8" or not EXPORTERS.get(target).uplink_codes:
        takes = sorted(n for n in EXPORTERS.names() if EXPORTERS.get(n).uplink_codes)
        raise ExportError(
            f"the model's uplink is quantized to {quant.bits} bits; {target} {precision} export "
            f"of such a model is not supported: export fp32 or fp16 to {' or '.join(takes)} "
            "(the uplink is already quantized)"
        )


def _uplink_parts(
    edge: torch.nn.Module,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]] | None:
    """For an edge ending in a quantized uplink (checked by :func:`check_uplink_export`):
    the edge to export, now emitting uint8 codes (a noisy one taking its noise as a second
    input), the cloud's decoder and the manifest's record of the code (None for an fp32
    uplink)."""
    from patrol_compress.contracts import NOISE_INPUT
    from patrol_compress.uplink import find_uplink
    from patrol_compress.uplink.noise import NoisyEdge

    quant = find_uplink(edge)
    if quant is None:
        return None
    quant.emit_codes()
    decode = quant.decoder()
    record: dict[str, Any] = {
        "bits": quant.bits,
        "channels": int(quant.hi.numel()),
        "step": [float(v) for v in decode.step.flatten()],
        "lo": [float(v) for v in decode.lo.flatten()],
        "decode": "in cloud.onnx: value = code * step + lo, per channel",
    }
    if not quant.noise:
        return edge, decode, record
    record["noise"] = quant.noise
    record["noise_input"] = NOISE_INPUT
    record["noise_dtype"] = "float32"  # in an fp16 export too: the graph casts it
    record["noise_draw"] = (
        f"edge input '{NOISE_INPUT}': standard normal, the codes' shape, drawn afresh for every "
        "image from a cryptographic source (patrol_compress.edge_noise.draw_noise, torch-free); "
        "zeros or a reused draw void uplink_capacity_bits"
    )
    return NoisyEdge(edge, quant), decode, record


def _references(
    edge: torch.nn.Module, cloud: torch.nn.Module, shape: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """The parity sample, its noise (a noisy uplink's edge only; drawn from ``seed``, since
    parity needs a repeatable draw, not a secret one) and torch's edge and cloud outputs."""
    from patrol_compress.uplink.noise import NoisyEdge

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((PARITY_BATCH, *shape), generator=gen)
    noise: torch.Tensor | None = None
    try:
        with torch.no_grad():
            if isinstance(edge, NoisyEdge):
                noise = torch.randn(edge.edge(x).shape, generator=gen)
                mid = edge(x, noise)
            else:
                mid = edge(x)
            out = cloud(mid)
    except RuntimeError as exc:
        first = first_line(exc)
        raise ExportError(
            f"the model does not accept inputs of shape {list(shape)}: {first}"
        ) from None
    if not isinstance(mid, torch.Tensor) or not isinstance(out, torch.Tensor):
        raise ExportError("edge and cloud partitions must each return one tensor in eval mode")
    for name, part, result in (("edge", edge, mid), ("cloud", cloud, out)):
        if not torch.isfinite(result).all():
            bad = sum(int((~torch.isfinite(t)).sum()) for t in part.state_dict().values())
            raise ExportError(
                f"torch's own {name} output is NaN/Inf: the model holds {bad:,} non-finite "
                "weight/buffer values (a diverged run?); nothing was exported"
            )
    noise_np = None if noise is None else noise.numpy()
    return x.numpy(), noise_np, mid.numpy(), out.numpy()


def _install(work: Path, out_dir: Path, names: list[str]) -> None:
    """Put the checked export at ``out_dir`` in one step.

    A new folder is renamed into place. An existing one (``--force``) is
    replaced whole: what it holds besides the files this export writes (a
    user's notes) is hard-linked into ``work`` first, then the two folders
    are swapped (:func:`~patrol_compress.io.swap_in`), so a kill at any moment
    leaves either the old export or the new one, each with its manifest; the
    old one ends up in ``work``, which the caller deletes.
    """
    if not out_dir.exists():
        os.replace(work, out_dir)
    else:
        _carry_over(out_dir, work, set(names))
        swap_in(work, out_dir)
    for name in names:  # inside a run: --force of that run may remove exactly these
        record_written(out_dir / name)


def _carry_over(old: Path, new: Path, replaced: set[str]) -> None:
    """Give ``new`` everything of ``old`` that the export does not replace (hard links, or
    copies where the file system has none); links are kept as links."""
    for entry in old.iterdir():
        if entry.name in replaced:
            continue
        dest = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dest))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _remove_empty(folders: list[Path]) -> None:
    """Undo the parent folders this export created, deepest first, if still empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            return


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """An existing output must be a folder, and is replaced only with ``force``: checked
    before the model is copied or anything is written, so a refused export costs nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and not force:
        raise OutputExistsError(
            f"{out_dir} already exists; pass --force to replace its export files"
        )


def export_partitions(
    model: BlockNet,
    split: int,
    out_dir: Path | str,
    target: str,
    precision: Precision | str = "fp32",
    input_shape: Sequence[int] = (3, 256, 256),
    opset: int = 17,
    extra_manifest: dict[str, Any] | None = None,
    *,
    force: bool = False,
    opt_batch: int = 8,
    max_batch: int = 32,
    seed: int = 0,
    int8: Int8Data | None = None,
) -> dict[str, Any]:
    """Export the edge (stem + first ``split`` stages) and cloud partitions of ``model``.

    Writes the target's files and ``manifest.json`` into ``out_dir`` and returns
    the manifest. An existing ``out_dir`` is refused unless ``force``; with
    ``force`` only the files this export writes are replaced. ``opt_batch`` and
    ``max_batch`` shape TensorRT's optimization profile (min batch is 1).
    ``precision="int8"`` needs ``int8`` (calibration and test images, see
    :mod:`patrol_compress.exporters.int8`); :func:`export_run` builds it from the
    run's recipe.
    """
    shape = _validate(precision, input_shape, opset, extra_manifest)
    if not isinstance(model, BlockNet):
        raise ExportError(f"expected a BlockNet, found {type(model).__name__}")
    check_uplink_export(model, split, target, precision)
    exporter = check_target(target, precision)
    if precision == "int8":
        _check_int8(require_data(int8), shape)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)

    work_model = copy.deepcopy(model).float().cpu().eval()
    edge: torch.nn.Module
    edge, cloud_part = split_model(work_model, split)
    uplink = _uplink_parts(edge)
    cloud: torch.nn.Module = cloud_part
    if uplink is not None:
        edge, decode, _ = uplink
        cloud = UplinkCloud(decode, cloud_part)
    sample, noise, edge_ref, cloud_ref = _references(edge, cloud, shape, seed)

    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(
            prefix=temp_name_prefix(out_dir.name), suffix=".partial", dir=out_dir.parent
        )
    )
    work.chmod(0o755)  # mkdtemp makes it private; it becomes the artifact folder when renamed
    try:
        job = ExportJob(
            edge=edge,
            cloud=cloud,
            work_dir=work,
            precision=cast(Precision, precision),
            input_shape=shape,
            opset=opset,
            sample=sample,
            noise_sample=noise,
            edge_ref=edge_ref,
            cloud_ref=cloud_ref,
            previous_dir=out_dir if out_dir.is_dir() else None,
            opt_batch=opt_batch,
            max_batch=max_batch,
            int8=int8 if precision == "int8" else None,
            uplink=None if uplink is None else uplink[2],
        )
        files = exporter.run(job)
        manifest = build_manifest(job, files, split, target, extra_manifest)
        manifest["model_sha256"] = state_sha256(model)  # which model this is an export of
        write_json(work / MANIFEST, manifest)
        _install(work, out_dir, [*files, MANIFEST])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not out_dir.is_dir():
            _remove_empty(created)
    return manifest
