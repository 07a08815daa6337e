"""Did pruning collapse the model? Its predictions on the first images it trained on, then and now.

A schedule that empties whole blocks, or a budget far below what the task
needs, leaves a network whose features are constant: it predicts one class for
everything. Removal is exact and the export's parity check passes, so nothing
else would notice. The pruner keeps the first images it is given (images only:
your loop has the labels, and reading your loader once more would shift its
random order) and the unpruned model's predicted classes on them; before export
it compares the model's predictions now. A collapse is called when the model
both disagrees with its start on most images and gives one class to most of
them, at least twice the share that class had at the start (disagreement
alone also follows from a poorly trained start: a model that learns during
pruning disagrees with it, and is not collapsed).
"""

from __future__ import annotations

import torch
from torch import nn

PROBE_IMAGES = 256
"""Images kept (from the first batches the pruner sees)."""

MIN_PROBE_IMAGES = 16
"""Fewer images than this say too little to warn about."""

MIN_AGREEMENT = 0.5
"""Below this share of agreeing predictions the pruned model may have collapsed..."""

MAX_ONE_CLASS = 0.5
"""...when one class also takes more than this share of the predictions (and doubled it)."""


@torch.no_grad()
def predicted_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Eval-mode argmax of a classifier's logits (None for other outputs: embeddings, maps)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        out = model(x)
    finally:
        for m, was in flags:
            m.training = was
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        return None
    return out.argmax(1).cpu()


class AgreementProbe:
    """The first images seen and the starting model's classes on them."""

    def __init__(self) -> None:
        self.images: torch.Tensor | None = None
        self.start: torch.Tensor | None = None

    def see(self, model: nn.Module, x: torch.Tensor) -> None:
        """Keep ``x`` (up to :data:`PROBE_IMAGES`) and the model's classes on it, once."""
        if self.images is not None and len(self.images) >= PROBE_IMAGES:
            return
        if self.images is not None and self.start is None:
            return  # the model's outputs are not classes: nothing to compare
        images = x.detach()[: PROBE_IMAGES - (0 if self.images is None else len(self.images))]
        classes = predicted_classes(model, images)
        if classes is None:
            self.images, self.start = images.cpu(), None
            return
        if self.images is None or self.start is None:
            self.images, self.start = images.cpu(), classes
        else:
            self.images = torch.cat([self.images, images.cpu()])
            self.start = torch.cat([self.start, classes])

    def agreement(self, model: nn.Module) -> float | None:
        """Share of kept images the model now classifies as it did at the start."""
        if self.images is None or self.start is None or len(self.images) < MIN_PROBE_IMAGES:
            return None
        dev = next(iter(model.parameters()), torch.empty(0)).device
        now = predicted_classes(model, self.images.to(dev))
        if now is None or now.shape != self.start.shape:
            return None
        return float((now == self.start).float().mean())

    def warning(self, model: nn.Module) -> str | None:
        """One line when the model's predictions collapsed onto one class since the start."""
        agree = self.agreement(model)
        if agree is None or agree >= MIN_AGREEMENT or self.images is None or self.start is None:
            return None
        dev = next(iter(model.parameters()), torch.empty(0)).device
        now = predicted_classes(model, self.images.to(dev))
        assert now is not None
        top = int(torch.mode(now).values)
        share_now = float((now == top).float().mean())
        share_start = float((self.start == top).float().mean())
        if share_now <= MAX_ONE_CLASS or share_now < 2 * share_start:
            return None
        return (
            f"the pruned model predicts class {top} for {share_now:.0%} of the first "
            f"{len(self.images)} images it was given (unpruned: {share_start:.0%}) and agrees "
            f"with the unpruned model on {agree:.0%} of them (a collapse?); check mask_lr, "
            "lambda1/lambda2 and the budget, or train longer after prune()"
        )
