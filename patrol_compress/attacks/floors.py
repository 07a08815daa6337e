"""The label-only floor under an attacker's own training objective.

An attack's score means something only above what it could have read with no
features: the mean image, or the mean of the image's class (the label-only
floor, :mod:`patrol_compress.attacks.data`). The class mean is the guess that
minimises the per-pixel MSE given the label, so it is the right floor for
decoders trained on MSE. A decoder trained for structure (``blackbox.loss:
mix``, ``0.84 * (1 - SSIM) + 0.16 * L1``) should be held to the label-only
guess that minimises *its* loss, which can score a higher SSIM than the
blurred mean: comparing an SSIM-trained attacker's SSIM with the MSE-optimal
floor would credit it with structure the label alone provides.

:func:`label_templates` fits that guess: per label, one image (sigmoid of a
free logit, started at the class mean) trained with Adam on the mix loss over
the attacker's images of that label. The steps, rate and batch are fixed
here, not tuned on any score. Classification only: a re-id probe's
label-only guess averages its identity's one to five other held-out photos,
too few to fit an image to, so re-id keeps the mean.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset

from patrol_compress.attacks.fit import reconstruction_loss
from patrol_compress.data.base import Item

TEMPLATE_STEPS = 300
TEMPLATE_LR = 0.05
TEMPLATE_BATCH = 64
TEMPLATE_IMAGES = 6000
"""At most this many attacker images (seeded draw) fit the templates: as many as the
light Fashion-MNIST attacker trains on; the class means use every attacker image."""


def label_templates(
    attacker: Dataset[Item],
    means: dict[int, torch.Tensor],
    loss: str,
    seed: int,
    max_images: int = TEMPLATE_IMAGES,
    steps: int = TEMPLATE_STEPS,
) -> dict[int, torch.Tensor]:
    """Per label, the one image minimising ``loss`` over the attacker's images of that label.

    ``means`` (the class means) are the starting points, and the answer for
    ``loss == "mse"`` (its exact minimiser). Every step draws the same number
    of images of each label and scores all labels in one loss call (the mean
    of the labels' means): each template's gradient comes from its own
    label's images only.
    """
    if loss == "mse":
        return dict(means)
    n = len(attacker)  # type: ignore[arg-type]
    order = np.random.default_rng(seed).permutation(n)[: max_images or n]
    by_label: dict[int, list[torch.Tensor]] = defaultdict(list)
    for i in order:
        image, label, _ = attacker[int(i)]
        by_label[int(label)].append(image)
    labels = sorted(by_label)
    images = [torch.stack(by_label[label]) for label in labels]
    starts = [means.get(label, x.mean(0)) for label, x in zip(labels, images, strict=True)]
    logits = torch.logit(torch.stack(starts).clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=TEMPLATE_LR)
    per_label = min(TEMPLATE_BATCH, *(len(x) for x in images))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.cat([x[torch.randint(len(x), (per_label,), generator=gen)] for x in images])
        guess = torch.sigmoid(logits).repeat_interleave(per_label, dim=0)
        value = reconstruction_loss(guess, x, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    fitted = torch.sigmoid(logits.detach())
    return {label: fitted[i] for i, label in enumerate(labels)}
