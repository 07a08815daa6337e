"""Lipschitz regularisation (Eq. 4-6) computed in one fused edge pass.

Block i of the edge is stage i (the stem is part of block 1, as the paper counts
"4 residual blocks" with 4 alphas). Clean and perturbed images go through the
edge as one batch ``[x, x + delta]``; after each block the L1 distance between
the two halves, divided by the previous block's (``||delta||_1`` for block 1),
is that block's local Lipschitz ratio ``k_i``. The paper's ``sup_x`` is taken as
the batch *mean*: a max over a mini-batch would give a gradient to one sample
only and is noisy. Denominators are guarded (``+ EPS``) against a dead feature
map. Only the clean half goes on to the cloud.

BatchNorm: the fused batch would mix clean and perturbed samples in the batch
statistics, so the edge's BNs run with their running statistics (eval mode)
during PATROL fine-tuning (their affine parameters still train). Both halves are
then normalised identically, the ratio measures the deployed (eval-mode)
function, and nothing about batch composition leaks into k_i. See
:func:`freeze_bn_stats`.

``delta`` is ``sigma * N(0, 1)``: Algorithm 1 samples N(0, 1) on images in
[0, 1], a perturbation larger than the image itself; ``sigma`` (recipe
``patrol.lipschitz.sigma``) keeps the ratio *local*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EPS = 1e-6


def fused_lipschitz(
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    alphas: Sequence[float],
    sigma: float,
    fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Run ``blocks`` on ``[x, x[:n] + delta]``; return (clean output, L_lip, per-block k_i).

    ``fraction`` of the batch (at least one image) gets a perturbed copy: the
    ratios are batch means, so a sub-sample estimates them with less edge compute
    (1 + fraction edge passes instead of 2).
    """
    b = x.shape[0]
    n = max(1, min(b, round(fraction * b)))
    delta = sigma * torch.randn_like(x[:n])
    h = torch.cat([x, x[:n] + delta], dim=0)
    prev = delta.abs().flatten(1).sum(1)
    loss = x.new_zeros(())
    ks: list[float] = []
    for block, alpha in zip(blocks, alphas, strict=False):
        h = block(h)
        diff = (h[b:] - h[:n]).abs().flatten(1).sum(1)
        k = (diff / (prev + EPS)).mean()
        loss = loss + alpha * k
        ks.append(float(k.detach()))
        prev = diff
    return h[:b], loss, ks


def freeze_bn_stats(module: nn.Module) -> None:
    """Put every BatchNorm under ``module`` in eval mode (running statistics, no updates)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
