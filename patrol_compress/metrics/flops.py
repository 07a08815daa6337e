"""Model size and compute: parameters, weight bytes, multiply-accumulates per image.

The edge budget is stated in parameters or bytes and the latency benchmark
compares measured speed-ups with MAC ratios, so all three are counted the same
way everywhere (:func:`count_params` is the toolkit's only parameter count).
MACs are counted by running one image through the module with forward hooks on
the layers that dominate a CNN's compute (convolutions and linear layers);
element-wise ops, pooling and normalisation are ignored, as in the usual "FLOPs"
tables (which report these MACs, not 2x them). Hooks see the real tensor
shapes, so pruned networks are counted with their pruned widths.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Sequence

import torch
from torch import nn

_BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


def count_params(
    modules: nn.Module | Iterable[nn.Module], only: Container[nn.Module] | None = None
) -> int:
    """Parameters the exported graph carries, each shared tensor counted once.

    ``modules`` is one module or several (the edge's top-level children).
    Modules that fold into a neighbour on export and leave no weights of their
    own (PATROL's channel masks, which set ``folds_on_export = True``) do not
    count, so a masked network and its folded export have the same size.
    ``only``: count just these modules' own parameters (see :func:`used_modules`).
    """
    tops = [modules] if isinstance(modules, nn.Module) else list(modules)
    seen: set[int] = set()
    total = 0
    for top in tops:
        for m in top.modules():
            if getattr(m, "folds_on_export", False) or (only is not None and m not in only):
                continue
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def used_modules(module: nn.Module, input_shape: Sequence[int]) -> set[nn.Module]:
    """The submodules an eval-mode forward of one image of ``input_shape`` (C, H, W) runs.

    What an exported graph holds: a re-id cloud partition's classifier, which
    only training uses, is not among them.
    """
    used: set[nn.Module] = set()

    def hook(m: nn.Module, _inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        used.add(m)

    _run_once(module, input_shape, [m.register_forward_hook(hook) for m in module.modules()])
    return used


def weight_bytes(
    module: nn.Module, precision: str = "fp32", only: Container[nn.Module] | None = None
) -> int:
    """Bytes the parameters take at ``precision`` ("fp32", "fp16" or "int8").

    For int8 this is one byte per parameter: biases (int32) and per-channel
    scales add a little, which the artifact's file sizes in the manifest show.

    BatchNorm running statistics are left out: on export they fold into the
    preceding convolution, so the deployed weights are about the parameters.
    ``only`` as for :func:`count_params`.
    """
    if precision not in _BYTES_PER_ELEMENT:
        raise ValueError(
            f"precision must be one of {sorted(_BYTES_PER_ELEMENT)}, got {precision!r}"
        )
    return count_params(module, only) * _BYTES_PER_ELEMENT[precision]


def _layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one conv or linear layer for the first image of its output batch."""
    if isinstance(m, nn.modules.conv._ConvNd):
        kernel = math.prod(int(k) for k in m.kernel_size)
        return int(out[0].numel()) * (m.in_channels // m.groups) * kernel
    if isinstance(m, nn.Linear):
        return int(out[0].numel()) * m.in_features
    return 0


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of conv and linear layers for one image of ``input_shape``.

    ``input_shape`` is (C, H, W) without the batch dimension. The module runs in
    eval mode under ``no_grad`` and every submodule's train/eval flag is restored
    afterwards, so counting never disturbs training or BatchNorm statistics.
    """
    total = 0

    def hook(m: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(m, out)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    _run_once(module, input_shape, handles)
    return total


def _run_once(
    module: nn.Module, input_shape: Sequence[int], handles: list[torch.utils.hooks.RemovableHandle]
) -> None:
    """One zero image through ``module`` in eval mode under no_grad; then remove ``handles``
    and restore every submodule's train/eval flag."""
    modes = {m: m.training for m in module.modules()}
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, was_training in modes.items():
            m.training = was_training
