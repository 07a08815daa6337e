"""Trainable soft masks (Section III-B1) and where they go.

A :class:`ChannelMask` scales each output channel; it sits *after* a BatchNorm
(inside a :class:`MaskedNorm` that replaces the BN), so a zero mask zeroes both
gamma and beta and the channel really emits 0 (zeroing gamma alone would leave
``relu(beta)``). Channel-wise pruning masks every BN of the edge (stem and the
first K stages); when the split is after the last stage, the re-id head's
BN-neck gets a mask too, because the last residual stream feeds it and a BN maps
a zero channel to a non-zero constant. Block-wise pruning puts one scalar mask on
each residual branch (after its last BN).

Initialisation: Algorithm 1 draws masks from N(0, 1), which on a *trained* target
model multiplies every channel by a random, often negative factor and wrecks its
accuracy; we start every mask at ``mask_init`` (1.0: the model is unchanged at
step 0) and let L1/FISTA drive the unneeded ones to exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import edge_child_names


class ChannelMask(nn.Module):
    """One trainable scale per channel (or a single scalar for a block mask)."""

    folds_on_export: ClassVar[bool] = True
    """Folded into its BN before export: :func:`~patrol_compress.metrics.flops.count_params`
    leaves its weights out."""

    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.weight.view(shape)


class MaskedNorm(nn.Module):
    """A BatchNorm followed by its mask; replaced by the folded BN before export.

    When the BN normalises with running statistics (eval mode: every edge BN
    during PATROL fine-tuning) the mask is folded into its affine parameters,
    ``m * (gamma * xhat + beta) == (m * gamma) * xhat + (m * beta)``, and the
    pair runs as one ``batch_norm``: the same function and gradients (to float
    rounding) with one pass over the activations instead of two forward and
    three backward. A training-mode BN, or a hook on either module (hooks must
    see both modules run), takes the plain two-module path.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, mask: ChannelMask) -> None:
        super().__init__()
        self.bn = bn
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if (
            bn.training
            or bn.running_mean is None
            or bn.running_var is None
            or _hooked(bn)
            or _hooked(self.mask)
        ):
            return self.mask(bn(x))
        w: torch.Tensor = self.mask.weight
        if w.numel() != bn.num_features:
            w = w.expand(bn.num_features)
        weight = bn.weight * w if bn.weight is not None else w
        bias = bn.bias * w if bn.bias is not None else None
        return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, False, 0.0, bn.eps)


def _hooked(m: nn.Module) -> bool:
    """Whether a forward or backward hook (the module's own or a global one) would see ``m`` run."""
    g = nn.modules.module
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def insert_channel_masks(model: BlockNet, split: int, init: float = 1.0) -> list[str]:
    """Wrap every BN of the edge partition (and the BN-neck at the last split) with a mask.

    Returns the names of the wrapped BNs (as they were before wrapping).
    """
    prefixes = edge_child_names(model, split)
    names = []
    for name, module in list(model.named_modules()):
        top = name.split(".")[0]
        if isinstance(module, nn.BatchNorm2d) and top in prefixes:
            names.append(name)
    if split == len(model.stage_names) and model.has_head:
        # The re-id head's BN-neck (a user's own head need not have a child named head).
        neck = getattr(getattr(model, "head", None), "neck", None)
        if isinstance(neck, nn.BatchNorm1d):
            names.append("head.neck")
    if not names:
        raise ModelError(f"no BatchNorm layers found in the edge partition at split {split}")
    for name in names:
        bn = model.get_submodule(name)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        _set(model, name, MaskedNorm(bn, ChannelMask(bn.num_features, init)))
    return names


def residual_blocks(model: BlockNet, split: int) -> list[str]:
    """Names of the residual blocks (modules with ``residual``/``shortcut``) on the edge."""
    prefixes = edge_child_names(model, split)
    out = []
    for name, module in model.named_modules():
        if (
            name.split(".")[0] in prefixes
            and hasattr(module, "residual")
            and hasattr(module, "shortcut")
        ):
            out.append(name)
    return out


def insert_block_masks(model: BlockNet, split: int, init: float = 1.0) -> list[str]:
    """One scalar mask on each edge residual branch, after the branch's last BN."""
    blocks = residual_blocks(model, split)
    if not blocks:
        raise ModelError(
            "block-wise pruning needs residual blocks with residual()/shortcut() methods "
            f"on the edge; none found at split {split}"
        )
    for name in blocks:
        block = model.get_submodule(name)
        last_bn = "bn3" if hasattr(block, "bn3") else "bn2"
        bn = getattr(block, last_bn)
        setattr(block, last_bn, MaskedNorm(bn, ChannelMask(1, init)))
    return blocks


def iter_masks(model: nn.Module) -> Iterator[tuple[str, ChannelMask]]:
    for name, m in model.named_modules():
        if isinstance(m, ChannelMask):
            yield name, m


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for _, m in iter_masks(model)]


@torch.no_grad()
def hard_zero(model: nn.Module, tau: float) -> int:
    """Set masks with ``|m| <= tau`` to exactly 0; returns how many were zeroed."""
    n = 0
    for _, m in iter_masks(model):
        small = m.weight.abs() <= tau
        n += int(small.sum())
        m.weight[small] = 0.0
    return n


@torch.no_grad()
def fold_masks(model: nn.Module) -> None:
    """Fold each mask into its BN's gamma and beta and put the plain BN back.

    ``m * (gamma * xhat + beta) == (m * gamma) * xhat + (m * beta)``, exact in
    eval mode; afterwards the network has torchvision's layout again.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, MaskedNorm):
            bn, w = module.bn, module.mask.weight
            scale = w if w.numel() == bn.num_features else w.expand(bn.num_features)
            if bn.affine:
                bn.weight.mul_(scale)
                bn.bias.mul_(scale)
            else:
                raise ModelError(f"cannot fold a mask into the non-affine BatchNorm '{name}'")
            _set(model, name, bn)


def mask_summary(model: BlockNet, tau: float) -> dict[str, dict[str, float]]:
    """Per block (stem, layer1, ...): number of mask entries and the fraction <= tau."""
    owner = {c: b for b, children in model.block_spec for c in children}
    out: dict[str, list[int]] = {}
    for name, m in iter_masks(model):
        block = owner.get(name.split(".")[0], name.split(".")[0])
        tot, zero = out.setdefault(block, [0, 0])
        out[block] = [tot + m.weight.numel(), zero + int((m.weight.abs() <= tau).sum())]
    return {k: {"masks": v[0], "sparsity": v[1] / max(v[0], 1)} for k, v in out.items()}
