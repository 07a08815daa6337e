"""Which images the attacker trains on, which are attacked, and which train the recogniser.

Attacker data. ``train`` (default): the target's own training split. The
threat model of He et al.'s black-box attack is an attacker who can query the
edge with images from the same distribution; handing it the training split is
the strongest such attacker, and a defense must hold against the strongest
one (``docs/measurements.md``: a defense is only as well measured as its attacker).
``auxiliary``: a share (``auxiliary_fraction``) of the held-out identities
(re-id) or test images (classification) that neither the target nor the
evaluation ever sees: the weaker, more realistic attacker.

Evaluation images always come from the held-out identities/test split, so no
attacker ever trained on an image it is scored on.

Recogniser data (attack accuracy). For classification the classes are shared
between training and test, so the recogniser trains on the clean training
split. For re-id the held-out identities are disjoint from training, so a
recogniser trained on training identities could never name them; instead each
held-out identity's images (sorted by camera) alternate between a clean
*reference* set, on which the recogniser trains, and the *probe* set that is
attacked and scored. With two images per camera every probe has a reference
from the same camera; the recogniser's accuracy on clean probes is reported as
the ceiling for attack accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from patrol_compress.attacks.floors import label_templates
from patrol_compress.config.privacy import AttackConfig
from patrol_compress.data.base import DataBundle, Item, ReidDataset
from patrol_compress.errors import DataError

Ref = tuple[ReidDataset, int]
MIX_FLOOR_SOURCE = "per class, one image fitted to the mix loss on the attacker's images"


class Picked(Dataset[Item]):
    """Chosen items of one or more datasets, in a fixed order."""

    def __init__(self, refs: list[Ref]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> Item:
        ds, j = self.refs[i]
        return ds[j]


@dataclass
class AttackData:
    """The three image sets of the module docstring, plus the attacker's mean image."""

    attacker: Picked
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    eval_pids: list[int]
    reference_images: torch.Tensor
    reference_labels: torch.Tensor
    num_classes: int
    eval_boxes: torch.Tensor | None
    """Per-image private-region boxes of the evaluation images, where the dataset has them."""
    mean_image: torch.Tensor
    label_only: torch.Tensor
    """Per evaluation image, the guess of an attacker who knows only its label: the
    mean image of its class (classification, over the attacker's images) or of its
    identity's other held-out images (re-id)."""
    summary: dict[str, Any]
    label_only_mix: torch.Tensor | None = None
    """Where an attack trains on ``loss: mix`` (classification): per evaluation image, its
    class's image fitted to that loss (:mod:`patrol_compress.attacks.floors`)."""


def _refs(ds: ReidDataset | None) -> list[Ref]:
    return [] if ds is None else [(ds, i) for i in range(len(ds))]


def _pid(ref: Ref) -> int:
    return ref[0].pids[ref[1]]


def _stack(refs: list[Ref]) -> torch.Tensor:
    if not refs:
        raise DataError("no images left for this part of the attack; the dataset is too small")
    return torch.stack([ds[i][0] for ds, i in refs])


def _subset(refs: list[Ref], cap: int, rng: np.random.Generator) -> list[Ref]:
    """``cap`` refs drawn at random (0 = all), in a random but seeded order."""
    order = rng.permutation(len(refs))
    if cap:
        order = order[:cap]
    return [refs[int(i)] for i in order]


def _boxes(refs: list[Ref]) -> torch.Tensor | None:
    """The datasets' recorded region boxes for ``refs``; None unless every image has one."""
    rows = []
    for ds, i in refs:
        if ds.region_boxes is None:
            return None
        rows.append(ds.region_boxes[i])
    return torch.tensor(np.stack(rows), dtype=torch.float32) if rows else None


def image_means(
    ds: Dataset[Item], batch_size: int = 128
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Pixel-wise mean of a dataset's images, and of each label's images (one pass)."""
    total: torch.Tensor | None = None
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = defaultdict(int)
    for x, pids, _ in DataLoader(ds, batch_size=batch_size):
        x = x.double()
        total = x.sum(0) if total is None else total + x.sum(0)
        for label in torch.unique(pids).tolist():
            sel = x[pids == label]
            sums[label] = sel.sum(0) + sums[label] if label in sums else sel.sum(0)
            counts[label] += len(sel)
    if total is None:
        raise DataError("the attacker has no images to compute a mean image from")
    n = sum(counts.values())
    return (total / n).float(), {k: (v / counts[k]).float() for k, v in sums.items()}


def identity_means(held: list[Ref], probe: list[Ref], fallback: torch.Tensor) -> torch.Tensor:
    """Re-id label-only guesses: per probe, the mean of its identity's *other* held images.

    An identity with no other image gets ``fallback`` (the mean image).
    """
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = defaultdict(int)
    for ds, i in held:
        pid = ds.pids[i]
        x = ds[i][0].double()
        sums[pid] = sums[pid] + x if pid in sums else x
        counts[pid] += 1
    out = []
    for ds, i in probe:
        pid = ds.pids[i]
        k = counts[pid]
        own = ds[i][0].double()
        out.append(fallback if k < 2 else ((sums[pid] - own) / (k - 1)).float())
    return torch.stack(out)


def _split_held(
    held: list[Ref], reid: bool, fraction: float, rng: np.random.Generator
) -> tuple[list[Ref], list[Ref]]:
    """(auxiliary, rest): by identity for re-id, by image for classification."""
    if reid:
        ids = sorted({_pid(r) for r in held})
        if len(ids) < 2:
            raise DataError(
                f"attacker_data 'auxiliary' needs at least 2 held-out identities, found {len(ids)}"
            )
        n_aux = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        aux_ids = {ids[int(i)] for i in rng.permutation(len(ids))[:n_aux]}
        return [r for r in held if _pid(r) in aux_ids], [r for r in held if _pid(r) not in aux_ids]
    order = rng.permutation(len(held))
    n_aux = min(len(held) - 1, max(1, round(fraction * len(held))))
    return [held[int(i)] for i in order[:n_aux]], [held[int(i)] for i in order[n_aux:]]


def _reference_probe(held: list[Ref]) -> tuple[list[Ref], list[Ref]]:
    """Per identity, images sorted by camera alternate reference, probe, reference, ..."""
    by_id: dict[int, list[tuple[int, int, Ref]]] = defaultdict(list)
    for pos, r in enumerate(held):
        by_id[_pid(r)].append((r[0].camids[r[1]], pos, r))
    reference: list[Ref] = []
    probe: list[Ref] = []
    for pid in sorted(by_id):
        imgs = [r for _, _, r in sorted(by_id[pid], key=lambda t: (t[0], t[1]))]
        reference += imgs[0::2]
        probe += imgs[1::2]
    return reference, probe


def build_attack_data(
    bundle: DataBundle, cfg: AttackConfig, attacker_train: ReidDataset | None = None
) -> AttackData:
    """Select the attacker, evaluation and recogniser images (module docstring).

    ``attacker_train`` replaces ``bundle.train`` as the ``train`` attacker's
    images: the whole training split of the data source where the recipe
    trained the target on a capped subset.
    """
    rng = np.random.default_rng(cfg.seed)
    for ds in (bundle.train, bundle.query, bundle.gallery, bundle.test, attacker_train):
        if ds is not None:
            ds.set_augment(False)
    reid = bundle.task == "reid"
    held = _refs(bundle.query) + _refs(bundle.gallery) if reid else _refs(bundle.test)
    if not held:
        raise DataError(f"dataset '{bundle.name}' has no held-out images to attack")
    if cfg.attacker_data == "auxiliary":
        attacker, held = _split_held(held, reid, cfg.auxiliary_fraction, rng)
    else:
        attacker = _refs(attacker_train if attacker_train is not None else bundle.train)
    if reid:
        reference, probe = _reference_probe(held)
        ids = sorted({_pid(r) for r in reference})
        table = {p: i for i, p in enumerate(ids)}
        num_classes = len(ids)
    else:
        reference = _subset(_refs(bundle.train), cfg.recogniser.max_images, rng)
        probe = held
        table = None
        num_classes = bundle.num_classes
    probe = _subset(probe, cfg.max_eval_images, rng)

    def labels(refs: list[Ref]) -> torch.Tensor:
        raw = [_pid(r) for r in refs]
        return torch.tensor([table[p] for p in raw] if table is not None else raw)

    attacker_set = Picked(attacker)
    mean, by_label = image_means(attacker_set)
    if reid:
        label_only = identity_means(held, probe, mean)
    else:
        label_only = torch.stack([by_label.get(_pid(r), mean) for r in probe])
    label_only_mix = None
    if not reid and "mix" in (cfg.blackbox.loss, cfg.adaptive.loss):
        templates = label_templates(attacker_set, by_label, "mix", cfg.seed)
        label_only_mix = torch.stack([templates.get(_pid(r), mean) for r in probe])
    return AttackData(
        attacker=attacker_set,
        eval_images=_stack(probe),
        eval_labels=labels(probe),
        eval_pids=[_pid(r) for r in probe],
        reference_images=_stack(reference),
        reference_labels=labels(reference),
        num_classes=num_classes,
        eval_boxes=_boxes(probe),
        mean_image=mean,
        label_only=label_only,
        summary={
            "attacker_data": cfg.attacker_data,
            "attacker_images": len(attacker),
            "label_only_source": "identity's other held-out images"
            if reid
            else "class mean over the attacker's images",
            "eval_images": len(probe),
            "eval_source": "query+gallery probes" if reid else "test",
            "recogniser_images": len(reference),
            "recogniser_source": "query+gallery references" if reid else "train",
            "recogniser_classes": num_classes,
            **({} if label_only_mix is None else {"label_only_mix_source": MIX_FLOOR_SOURCE}),
        },
        label_only_mix=label_only_mix,
    )
