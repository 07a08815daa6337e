"""The re-identification head of the paper's Fig. 3 (BNNeck, as in FastReID).

Global average pooling gives the feature used by the triplet loss; a BatchNorm1d
"neck" gives the embedding compared by cosine distance at inference; a bias-free
linear layer gives identity logits for the cross-entropy loss. In training mode
the head returns ``(logits, pooled feature)``; in eval mode the embedding (re-id)
or the logits (classification), so exported cloud partitions emit one tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Task = Literal["reid", "classification"]


class ReidHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, task: Task = "reid") -> None:
        super().__init__()
        self.task = task
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = nn.BatchNorm1d(in_channels)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift before the classifier
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feat = torch.flatten(self.pool(x), 1)
        emb = self.neck(feat)
        if self.training:
            return self.classifier(emb), feat
        if self.task == "classification":
            return self.classifier(emb)
        return emb
