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


def test_datasets(data: DataBundle) -> list[ReidDataset]:
    """The images accuracy is measured on, in the order :func:`score_outputs` expects.

    Classification: ``[test]``; re-id: ``[query, gallery]``. Exported artifacts
    (INT8 parity) run these through their own runtime and score the outputs
    here, so a deployed model is measured exactly as the torch model is.
    """
    if data.task == "classification":
        assert data.test is not None  # a classification bundle always has a test split
        return [data.test]
    assert data.query is not None and data.gallery is not None
    return [data.query, data.gallery]


def score_outputs(data: DataBundle, outputs: np.ndarray) -> dict[str, float]:
    """Accuracy from the model's outputs for every image of :func:`test_datasets`, in order."""
    sets = test_datasets(data)
    if len(outputs) != sum(len(ds) for ds in sets):
        raise ValueError(f"{len(outputs)} outputs for {sum(len(ds) for ds in sets)} test images")
    if data.task == "classification":
        return {"top1": top1_accuracy(outputs, np.asarray(sets[0].pids))}
    query, gallery = sets
    qf, gf = outputs[: len(query)], outputs[len(query) :]
    return evaluate_ranking(
        cosine_distance(qf, gf),
        np.asarray(query.pids),
        np.asarray(gallery.pids),
        np.asarray(query.camids),
        np.asarray(gallery.camids),
    ).as_dict()


def evaluate(model: nn.Module, data: DataBundle, batch_size: int = 128) -> dict[str, float]:
    """``{rank1, rank5, rank10, mAP, mINP}`` (re-id) or ``{top1}`` (classification), fractions."""
    outputs = [embed(model, ds, batch_size)[0] for ds in test_datasets(data)]
    return score_outputs(data, np.concatenate(outputs))


def headline(acc: dict[str, float]) -> str:
    if "top1" in acc:
        return f"top-1 {acc['top1'] * 100:.1f}%"
    return f"rank-1 {acc['rank1'] * 100:.1f}%  mAP {acc['mAP'] * 100:.1f}%"
