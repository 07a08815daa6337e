"""Short fine-tuning of a defended copy, with the defense active.

Used by every defense whose sweep asks for ``epochs > 0`` (APP always): the
model trains on the recipe's own supervised loss (CE + triplet for re-id) at
the sweep's learning rate with the recipe's warm-up/cosine schedule, and an
optional extra term computed from the edge features. No checkpoints: a
fine-tune is minutes, and the sweep itself resumes point by point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from patrol_compress.defenses.base import DefenseContext
from patrol_compress.errors import TrainingError
from patrol_compress.models import split as split_model
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.train.loop import set_lr
from patrol_compress.train.target import loss_from_outputs, make_loader, set_epoch

ExtraTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(images, edge features) -> a loss added to the supervised loss."""


def finetune(
    model: BlockNet,
    split: int,
    ctx: DefenseContext,
    epochs: int,
    extra: ExtraTerm | None = None,
    before_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``epochs``; returns the mean loss per epoch.

    ``before_step(x, z_detached)`` runs before each model update (APP trains
    its reconstructor and discriminator there).
    """
    if epochs <= 0:
        return []
    tcfg = ctx.recipe.train
    dev = ctx.device
    model.to(dev)
    edge, cloud = split_model(model, split)
    loader = make_loader(ctx.data, tcfg, ctx.seed)
    opt = torch.optim.Adam(model.parameters(), lr=ctx.sweep.lr, weight_decay=tcfg.weight_decay)
    steps = len(loader)
    history: list[float] = []
    try:
        for epoch in range(epochs):
            model.train()
            set_epoch(loader, epoch)
            total, n = 0.0, 0
            for i, (x, pids, _) in enumerate(loader):
                set_lr(opt, ctx.sweep.lr, epoch + i / steps, 0, epochs)
                x, pids = x.to(dev), pids.to(dev)
                z = edge(x)
                if before_step is not None:
                    before_step(x, z.detach())
                logits, feat = cloud(z)
                loss, _ = loss_from_outputs(logits, feat, pids, tcfg, ctx.data.task)
                if extra is not None:
                    loss = loss + extra(x, z)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                n += len(x)
            mean = total / max(n, 1)
            if not math.isfinite(mean):
                raise TrainingError(f"defense fine-tuning loss became {mean} in epoch {epoch + 1}")
            history.append(mean)
    finally:
        ctx.data.train.set_augment(False)
        model.eval()
    return history
