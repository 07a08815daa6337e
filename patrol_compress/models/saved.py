"""A run directory's model: safetensors weights plus a JSON description.

``model.safetensors`` holds the weights, ``model.json`` what is needed to rebuild
the network without unpickling anything: the resolved model config, number of
classes, input shape, the sha256 of the weights, and for pruned models the
removed residual branches and torch-pruning's history (plain lists, kept for
provenance). A pruned network is rebuilt by constructing the unpruned one and
resizing every Conv/BatchNorm/Linear to the shapes stored in the weights file:
structured pruning only ever shrinks channel counts, so the shapes alone define
the architecture, and this works for any CNN the factory can build.

A run folder is data: opening one never runs code it names. A custom
architecture's ``model.factory`` (a Python function) is imported only when the
caller allows it, by passing that same factory (the recipe's ``model.factory``,
or the function itself) or by opting in (``trust_model_code``, the CLI's
``--trust-model-code``); names of modules that run code instead of building a
network (``torch.hub``, ``os``, ``subprocess``, ``builtins``, ...) are refused
even then (:mod:`patrol_compress.config.factory`).

It lives in :mod:`patrol_compress.models` because it saves and rebuilds the
networks defined there; the older path ``patrol_compress.run`` re-exports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from patrol_compress.config.recipe import ModelConfig
from patrol_compress.contracts import META_FILE, MODEL_FILE
from patrol_compress.errors import ArtifactError, ModelError
from patrol_compress.io import atomic_path, contained_file, read_json, sha256_file, write_json
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.factory import build_model, key_mismatch
from patrol_compress.models.head import ReidHead
from patrol_compress.models.residual import remove_residual_branches
from patrol_compress.uplink.quant import UplinkQuant


def save_model_file(path: Path, model: nn.Module) -> str:
    """Write ``model``'s state dict as safetensors atomically; returns its sha256."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return sha256_file(path)


def state_sha256(model: nn.Module) -> str:
    """sha256 of ``model``'s weights and buffers (names, dtypes, shapes, bytes), in memory.

    An export records it (``manifest.json``'s ``model_sha256``), so the adaptive
    attack can tell whether an artifact was exported from the model it attacks,
    however the artifact was made.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_run_model(run_dir: Path, model: BlockNet, info: dict[str, Any]) -> None:
    """Save weights and description.

    ``info`` needs model, num_classes, in_channels, task and image_size.
    """
    missing = [
        k for k in ("model", "num_classes", "in_channels", "task", "image_size") if k not in info
    ]
    if missing:
        raise ModelError(f"model description lacks {missing}")
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_model_file(run_dir / MODEL_FILE, model)
    meta = dict(info)
    meta["input_shape"] = [info["in_channels"], info["image_size"], info["image_size"]]
    meta["weights"] = {"file": MODEL_FILE, "sha256": digest}
    write_json(run_dir / META_FILE, meta)


def load_run_model(
    run_dir: Path,
    factory: str | Callable[..., Any] | None = None,
    trust_model_code: bool = False,
) -> tuple[BlockNet, dict[str, Any]]:
    """Rebuild the model saved in ``run_dir`` (eval mode) and return it with its description.

    A custom architecture needs the caller's consent to run code (module
    docstring): ``factory`` is the ``'pkg.module:function'`` the caller expects
    (it must be the one ``model.json`` records) or the function itself, and
    ``trust_model_code`` allows whichever factory ``model.json`` records.
    """
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(
            f"{meta_path}: no saved model here (expected {META_FILE} from train/prune)"
        )
    meta = read_json(meta_path)
    _check_meta(meta, meta_path)
    weights = contained_file(run_dir, meta.get("weights", {}).get("file", MODEL_FILE), meta_path)
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file missing")
    expected = meta.get("weights", {}).get("sha256")
    if expected and sha256_file(weights) != expected:
        raise ArtifactError(f"{weights}: sha256 does not match {meta_path}; the file was changed")
    try:
        config = ModelConfig.model_validate(meta["model"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["model", *(str(p) for p in first["loc"])])
        msg = str(first["msg"]).removeprefix("Value error, ")
        # A model-level rule's message names its field already ("model.factory ...").
        raise ArtifactError(
            f"{meta_path}: {msg if msg.startswith('model.') else f'{where}: {msg}'}"
        ) from None
    code = allowed_factory(config, meta_path, factory, trust_model_code)
    model = build_model(
        config, meta["num_classes"], meta["in_channels"], meta["task"], meta["image_size"], code
    )
    state = read_state_dict(weights)
    if meta.get("uplink"):
        _put_uplink_back(model, meta, meta_path)
    if meta.get("removed_blocks"):
        remove_residual_branches(model, meta["removed_blocks"])
    load_resized(model, state, str(weights))
    model.eval()
    return model, meta


def _put_uplink_back(model: BlockNet, meta: dict[str, Any], meta_path: Path) -> None:
    """The quantized uplink ``model.json`` records, inserted before the weights are read."""
    from patrol_compress.uplink import BITS, insert_uplink

    record = meta["uplink"]
    noise: Any = record.get("noise", 0.0) if isinstance(record, dict) else None
    ok = (
        isinstance(record, dict)
        and record.get("bits") in BITS
        and isinstance(record.get("split"), int)
        and isinstance(record.get("init_quantile", 0.999), (int, float))
        and isinstance(noise, (int, float))
        and not isinstance(noise, bool)
        and noise >= 0
    )
    if not ok:
        raise ArtifactError(
            f"{meta_path}: 'uplink' must be {{bits: 1|2|4|8, split: K[, noise: >= 0]}}, found "
            f"{str(record)[:60]!r}"
        )
    shape = (meta["in_channels"], meta["image_size"], meta["image_size"])
    insert_uplink(
        model,
        record["split"],
        record["bits"],
        shape,
        float(record.get("init_quantile", 0.999)),
        float(noise),
    )


def allowed_factory(
    config: ModelConfig,
    meta_path: Path,
    factory: str | Callable[..., Any] | None,
    trust_model_code: bool,
) -> Callable[..., Any] | None:
    """The factory function to call instead of importing one (None: import the recorded one).

    Raises :class:`ModelError` when ``model.json`` names code the caller did not
    allow (a run folder received from someone else must not run it).
    """
    if config.arch != "custom" or trust_model_code:
        return None
    if callable(factory):
        return factory  # code the caller holds: nothing named by the run is imported
    recorded = str(config.factory)
    if factory is None:
        raise ModelError(
            f"{meta_path}: the saved model is built by code the run folder names "
            f"(model.factory '{recorded}'); a run folder is data, so it is not imported unless "
            "you allow it: pass --trust-model-code (API: trust_model_code=True or "
            f"factory='{recorded}') if you trust this run and that module"
        )
    if factory != recorded:
        raise ModelError(
            f"{meta_path}: model.factory is '{recorded}', not the factory this job uses "
            f"('{factory}'); refusing to import it"
        )
    return None


_META_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "num_classes": (int,),
    "in_channels": (int,),
    "task": (str,),
    "image_size": (int,),
    "weights": (dict,),
}
_META_RANGES = {"num_classes": (1, 1_000_000), "in_channels": (1, 64), "image_size": (8, 4096)}


def _check_meta(meta: Any, path: Path) -> None:
    """model.json must hold what we wrote: the keys, their types, sane sizes (else one line)."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key == "weights" and value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise ArtifactError(
                f"{path}: '{key}' must be {types[0].__name__}, found {str(value)[:40]!r}"
            )
    for key, (low, high) in _META_RANGES.items():
        if not low <= meta[key] <= high:
            raise ArtifactError(f"{path}: '{key}' is {meta[key]}, expected {low}..{high}")
    removed = meta.get("removed_blocks", [])
    if not isinstance(removed, list) or not all(isinstance(n, str) and n for n in removed):
        raise ArtifactError(f"{path}: 'removed_blocks' must be a list of block names")
    if meta["task"] not in ("reid", "classification"):
        found = str(meta["task"])[:40]
        raise ArtifactError(f"{path}: 'task' must be reid or classification, found {found!r}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a torch file loaded with ``weights_only=True``.

    Never unpickles arbitrary objects: a ``.pth`` that needs more than tensors
    and plain containers is refused by torch itself.
    """
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many different errors
        raise ArtifactError(f"{path}: cannot read weights ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ArtifactError(f"{path}: expected a state dict of tensors")
    return state


def load_resized(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, exact: bool = False
) -> None:
    """Shrink layers to the shapes in ``state`` (pruned weights), then load it strictly.

    Pruning only ever removes channels, so weights with a layer *larger* than the
    architecture's, another kernel size, another number of classes or other keys
    come from a different model and raise :class:`ModelError` naming ``source``.
    ``exact`` (unpruned weights, e.g. a trained target) refuses any shape change.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ModelError(
            f"{source}: weights do not fit the model's architecture: "
            f"{key_mismatch(missing, unexpected)}; these weights are from another model"
        )
    _check_dtypes(own, state, source)
    for name, module in list(model.named_modules()):
        new = _resized(module, name, state, source, exact)
        if new is not None:
            _set_submodule(model, name, new)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
        raise ModelError(
            f"{source}: weights do not fit the model's architecture ({detail})"
        ) from None


def _check_dtypes(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str
) -> None:
    """Float weights must be floats (and counters integers): an int8-cast file loaded
    silently, every weight rounded to an integer."""
    for key, tensor in state.items():
        if tensor.is_floating_point() != own[key].is_floating_point():
            raise ModelError(
                f"{source}: '{key}' holds {str(tensor.dtype).removeprefix('torch.')} values, "
                f"the model's are {str(own[key].dtype).removeprefix('torch.')}; these are not "
                "this model's weights (quantized or cast?)"
            )


def _check_shape(
    key: str, shape: tuple[int, ...], expected: tuple[int, ...], source: str, exact: bool
) -> None:
    """Weights may only be narrower than the architecture (pruned), never wider or reshaped."""
    if shape == expected:
        return
    if exact:
        raise ModelError(
            f"{source}: '{key}' has shape {shape}, the model's architecture expects "
            f"{expected}; these weights are from another model"
        )
    if len(shape) != len(expected) or any(s > e for s, e in zip(shape, expected, strict=True)):
        raise ModelError(
            f"{source}: '{key}' has shape {shape}, which does not fit the architecture's "
            f"{expected} (pruning only removes channels); these weights are from another model"
        )


def _resized(
    module: nn.Module, name: str, state: dict[str, torch.Tensor], source: str, exact: bool
) -> nn.Module | None:
    key = f"{name}.weight" if name else "weight"
    if isinstance(module, ReidHead):
        ckey = f"{name}.classifier.weight" if name else "classifier.weight"
        if ckey in state and state[ckey].shape[0] != module.classifier.out_features:
            raise ModelError(
                f"{source}: '{ckey}' has {state[ckey].shape[0]} classes, the model has "
                f"{module.classifier.out_features}; these weights are from another model"
            )
    if isinstance(module, UplinkQuant):
        hkey = f"{name}.hi"
        if hkey in state and state[hkey].shape[0] != module.hi.numel():
            _check_shape(hkey, tuple(state[hkey].shape), (module.hi.numel(),), source, exact)
            return UplinkQuant(
                int(state[hkey].shape[0]), module.bits, module.init_quantile, module.noise
            )
        return None
    if key not in state:
        return None
    shape = tuple(state[key].shape)
    if isinstance(module, nn.Conv2d) and shape != tuple(module.weight.shape):
        _check_shape(key, shape, tuple(module.weight.shape), source, exact)
        if shape[2:] != tuple(module.weight.shape[2:]):
            raise ModelError(
                f"{source}: '{key}' has kernel {shape[2:]}, the architecture's is "
                f"{tuple(module.weight.shape[2:])}; these weights are from another model"
            )
        out_c, in_per_group = shape[0], shape[1]
        groups = (
            out_c if module.groups > 1 and module.groups == module.in_channels else module.groups
        )
        return nn.Conv2d(
            in_per_group * groups,
            out_c,
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=groups,
            bias=module.bias is not None,
        )
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and shape[0] != module.num_features:
        _check_shape(key, shape, (module.num_features,), source, exact)
        bn = type(module)(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine)
        for p_name, p in module.named_parameters(recurse=False):
            getattr(bn, p_name).requires_grad_(p.requires_grad)
        return bn
    if isinstance(module, nn.Linear) and shape != tuple(module.weight.shape):
        _check_shape(key, shape, tuple(module.weight.shape), source, exact)
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    return None


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
