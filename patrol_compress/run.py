"""A run directory's model: safetensors weights plus a JSON description.

``model.safetensors`` holds the weights, ``model.json`` what is needed to rebuild
the network without unpickling anything: the resolved model config, number of
classes, input shape, the sha256 of the weights, and for pruned models the
removed residual branches and torch-pruning's history (plain lists, kept for
provenance). A pruned network is rebuilt by constructing the unpruned one and
resizing every Conv/BatchNorm/Linear to the shapes stored in the weights file:
structured pruning only ever shrinks channel counts, so the shapes alone define
the architecture, and this works for any CNN the factory can build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from patrol_compress.errors import ArtifactError, ModelError
from patrol_compress.io import atomic_path, read_json, sha256_file, write_json
from patrol_compress.models import BlockNet, build_model
from patrol_compress.recipe import ModelConfig

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def save_model_file(path: Path, model: nn.Module) -> str:
    """Write ``model``'s state dict as safetensors atomically; returns its sha256."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return sha256_file(path)


def save_run_model(
    run_dir: Path, model: BlockNet, info: dict[str, Any], stem: str = "model"
) -> None:
    """Save weights and description.

    ``info`` needs model, num_classes, in_channels, task and image_size.
    """
    missing = [
        k for k in ("model", "num_classes", "in_channels", "task", "image_size") if k not in info
    ]
    if missing:
        raise ModelError(f"model description lacks {missing}")
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_model_file(run_dir / f"{stem}.safetensors", model)
    meta = dict(info)
    meta["input_shape"] = [info["in_channels"], info["image_size"], info["image_size"]]
    meta["weights"] = {"file": f"{stem}.safetensors", "sha256": digest}
    write_json(run_dir / f"{stem}.json", meta)


def load_run_model(run_dir: Path, stem: str = "model") -> tuple[BlockNet, dict[str, Any]]:
    """Rebuild the model saved in ``run_dir`` (eval mode) and return it with its description."""
    meta_path = run_dir / f"{stem}.json"
    if not meta_path.is_file():
        raise ArtifactError(
            f"{meta_path}: no saved model here (expected {META_FILE} from train/prune)"
        )
    meta = read_json(meta_path)
    weights = run_dir / meta.get("weights", {}).get("file", MODEL_FILE)
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file missing")
    expected = meta.get("weights", {}).get("sha256")
    if expected and sha256_file(weights) != expected:
        raise ArtifactError(f"{weights}: sha256 does not match {meta_path}; the file was changed")
    model = build_model(
        ModelConfig.model_validate(meta["model"]),
        meta["num_classes"],
        meta["in_channels"],
        meta["task"],
        meta["image_size"],
    )
    state = load_file(str(weights))
    if meta.get("removed_blocks"):
        from patrol_compress.pruning.blocks import remove_residual_branches

        remove_residual_branches(model, meta["removed_blocks"])
    load_resized(model, state, str(weights))
    model.eval()
    return model, meta


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


def load_resized(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Shrink layers to the shapes in ``state`` (pruned weights), then load it strictly."""
    for name, module in list(model.named_modules()):
        new = _resized(module, name, state)
        if new is not None:
            _set_submodule(model, name, new)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(
            f"{source}: weights do not fit the architecture in the recipe ({first})"
        ) from None


def _resized(module: nn.Module, name: str, state: dict[str, torch.Tensor]) -> nn.Module | None:
    key = f"{name}.weight" if name else "weight"
    if key not in state:
        return None
    shape = tuple(state[key].shape)
    if isinstance(module, nn.Conv2d) and shape != tuple(module.weight.shape):
        if len(shape) != 4:
            raise ModelError(f"'{key}' has shape {shape}, expected a 4-d conv weight")
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
        bn = type(module)(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine)
        for p_name, p in module.named_parameters(recurse=False):
            getattr(bn, p_name).requires_grad_(p.requires_grad)
        return bn
    if isinstance(module, nn.Linear) and shape != tuple(module.weight.shape):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    return None


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
