"""Accuracy of a model on a DataBundle: re-id ranking or top-1 classification."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from patrol_compress.data.base import DataBundle, ReidDataset
from patrol_compress.metrics.reid import cosine_distance, evaluate_ranking, top1_accuracy


@torch.no_grad()
def embed(
    model: nn.Module, ds: ReidDataset, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode outputs for every image, with pids and camids (order preserved)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    prev_aug = ds.augment
    ds.set_augment(False)
    feats, pids, cams = [], [], []
    try:
        for x, p, c in DataLoader(ds, batch_size=batch_size, shuffle=False):
            feats.append(model(x.to(dev)).float().cpu().numpy())
            pids.append(np.asarray(p))
            cams.append(np.asarray(c))
    finally:
        ds.set_augment(prev_aug)
        model.train(was)
    return np.concatenate(feats), np.concatenate(pids), np.concatenate(cams)


def evaluate(model: nn.Module, data: DataBundle, batch_size: int = 128) -> dict[str, float]:
    """``{rank1, rank5, rank10, mAP, mINP}`` (re-id) or ``{top1}`` (classification), fractions."""
    if data.task == "classification":
        assert data.test is not None  # a classification bundle always has a test split
        logits, labels, _ = embed(model, data.test, batch_size)
        return {"top1": top1_accuracy(logits, labels)}
    assert data.query is not None and data.gallery is not None
    qf, qp, qc = embed(model, data.query, batch_size)
    gf, gp, gc = embed(model, data.gallery, batch_size)
    return evaluate_ranking(cosine_distance(qf, gf), qp, gp, qc, gc).as_dict()


def headline(acc: dict[str, float]) -> str:
    if "top1" in acc:
        return f"top-1 {acc['top1'] * 100:.1f}%"
    return f"rank-1 {acc['rank1'] * 100:.1f}%  mAP {acc['mAP'] * 100:.1f}%"
