"""Stage 1: train the target re-id (or classification) model.

Cross-entropy with label smoothing plus batch-hard triplet on P x K identity
batches (re-id), Adam with linear warm-up and cosine decay, AMP on CUDA. For
classification data the triplet term is dropped and batches are shuffled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from patrol_compress.data.base import DataBundle
from patrol_compress.data.sampler import IdentitySampler
from patrol_compress.recipe import TrainConfig
from patrol_compress.train.loop import EpochReporter, device, lr_factor, run_stage
from patrol_compress.train.losses import reid_loss


def make_loader(data: DataBundle, cfg: TrainConfig, seed: int) -> DataLoader:
    """P x K batches for re-id, shuffled batches of the same size for classification."""
    data.train.set_augment(True)
    if data.task == "reid":
        sampler = IdentitySampler(
            data.train.pids, cfg.identities_per_batch, cfg.instances_per_identity, seed
        )
        return DataLoader(
            data.train,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=True,
        )
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=g,
        num_workers=cfg.num_workers,
        drop_last=True,
    )


def supervised_loss(
    model: nn.Module, x: torch.Tensor, pids: torch.Tensor, cfg: TrainConfig, task: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """The prediction loss L of Eq. 1 (what PATROL's fine-tuning also minimises)."""
    logits, feat = model(x)
    return loss_from_outputs(logits, feat, pids, cfg, task)


def loss_from_outputs(
    logits: torch.Tensor, feat: torch.Tensor, pids: torch.Tensor, cfg: TrainConfig, task: str
) -> tuple[torch.Tensor, dict[str, float]]:
    weight = cfg.triplet_weight if task == "reid" else 0.0
    loss, parts = reid_loss(logits, feat, pids, cfg.label_smoothing, cfg.triplet_margin, weight)
    parts["loss"] = float(loss.detach())
    return loss, parts


def set_epoch(loader: DataLoader, epoch: int) -> None:
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def train_target(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    folder: Path,
    seed: int,
    resume: bool = False,
    quiet: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` in place; checkpoints go to ``folder``."""
    dev = device()
    model.to(dev)
    loader = make_loader(data, cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps = len(loader)

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        model.train()
        set_epoch(loader, epoch)
        for i, (x, pids, _) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch + i / steps, cfg.warmup_epochs, cfg.epochs)
            x, pids = x.to(dev, non_blocking=True), pids.to(dev, non_blocking=True)
            with torch.autocast(dev.type, enabled=use_amp):
                loss, parts = supervised_loss(model, x, pids, cfg, data.task)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            rep.step(len(x), parts)

    return run_stage(
        "train",
        folder,
        cfg.epochs,
        steps,
        epoch_fn,
        {"model": model},
        {"opt": opt},
        resume,
        quiet=quiet,
    )
