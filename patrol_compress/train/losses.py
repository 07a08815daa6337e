"""Losses of the re-id framework of Fig. 3: label-smoothed cross-entropy + batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(feat: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Hermans et al.'s batch-hard triplet loss on Euclidean distances.

    For each anchor, the farthest positive and the closest negative in the batch;
    soft-margin (softplus) when ``margin`` is 0.
    """
    dist = torch.cdist(feat.float(), feat.float()).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = torch.isfinite(pos) & torch.isfinite(neg)
    if not valid.any():
        return feat.sum() * 0.0
    gap = pos[valid] - neg[valid]
    if margin > 0:
        return F.relu(gap + margin).mean()
    return F.softplus(gap).mean()


def reid_loss(
    logits: torch.Tensor,
    feat: torch.Tensor,
    pids: torch.Tensor,
    label_smoothing: float,
    margin: float,
    triplet_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy with label smoothing plus weighted batch-hard triplet."""
    ce = F.cross_entropy(logits.float(), pids, label_smoothing=label_smoothing)
    loss = ce
    parts = {"ce": float(ce.detach())}
    if triplet_weight > 0:
        tri = batch_hard_triplet(feat, pids, margin)
        loss = loss + triplet_weight * tri
        parts["triplet"] = float(tri.detach())
    return loss, parts
