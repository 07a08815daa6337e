"""Stage 1: train the target re-id (or classification) model.

Cross-entropy with label smoothing plus batch-hard triplet on P x K identity
batches (re-id), Adam with linear warm-up and cosine decay, AMP on CUDA. For
classification data the triplet term is dropped and batches are shuffled.

Under torchrun every rank trains on its share of the same global batch and the
loss is computed on the gathered global batch (see
:mod:`patrol_compress.distributed`); in one process nothing here changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from patrol_compress import distributed
from patrol_compress.config.recipe import TrainConfig
from patrol_compress.data.base import DataBundle
from patrol_compress.data.sampler import IdentitySampler, ShardedBatchSampler
from patrol_compress.errors import DataError, ModelError
from patrol_compress.machine import check_thread_count
from patrol_compress.train.loop import EpochReporter, device, run_stage, set_lr
from patrol_compress.train.losses import reid_loss


def check_batches(data: DataBundle, cfg: TrainConfig) -> None:
    """Raise DataError unless a full training batch can be drawn from ``data``.

    Called before a run folder is touched: a recipe asking for more identities
    per batch than the data has must fail before ``--force`` clears an old run,
    not at the first training step. Nothing is loaded (identities are known
    without decoding images).
    """
    check_thread_count(cfg.num_workers, "train.num_workers", zero_means="load in this process")
    if data.task == "reid":
        IdentitySampler(data.train.pids, cfg.identities_per_batch, cfg.instances_per_identity)
    elif len(data.train) < cfg.batch_size:
        raise DataError(
            f"train: a batch of {cfg.batch_size} images (identities_per_batch x "
            f"instances_per_identity) needs at least that many training images, "
            f"found {len(data.train)}"
        )
    world = distributed.current().world
    if cfg.batch_size % world:
        raise DataError(
            f"the batch of {cfg.batch_size} images cannot be split evenly between {world} "
            "processes; choose train.identities_per_batch x instances_per_identity "
            "divisible by the number of processes"
        )


def steps_per_epoch(data: DataBundle, cfg: TrainConfig) -> int:
    """Steps in one epoch of :func:`make_loader`'s batches (every rank runs as many).

    Computed without building the loader, which switches the training set's
    augmentation on: a stage that reads training images before its loader
    exists (the suite surrogate's statistics) must see them as before.
    """
    if data.task == "reid":
        ids = IdentitySampler(data.train.pids, cfg.identities_per_batch, cfg.instances_per_identity)
        return len(ids) // cfg.batch_size
    return len(data.train) // cfg.batch_size


def make_loader(data: DataBundle, cfg: TrainConfig, seed: int) -> DataLoader:
    """P x K batches for re-id, shuffled batches of the same size for classification.

    In a distributed run each rank's loader yields its ``B / world`` share of the
    global batch one process would load (:class:`ShardedBatchSampler`); the
    classification shuffle draws from the same generator in the same order as
    the single-process ``shuffle=True`` loader, so the global batches agree.
    """
    check_thread_count(cfg.num_workers, "train.num_workers", zero_means="load in this process")
    data.train.set_augment(True)
    ctx = distributed.current()
    batch = cfg.batch_size
    if data.task == "reid":
        ids = IdentitySampler(
            data.train.pids, cfg.identities_per_batch, cfg.instances_per_identity, seed
        )
        if not ctx.active:
            return DataLoader(
                data.train,
                batch_size=batch,
                sampler=ids,
                num_workers=cfg.num_workers,
                drop_last=True,
            )
        return DataLoader(
            data.train,
            batch_size=batch // ctx.world,
            sampler=ShardedBatchSampler(ids, batch, ctx.rank, ctx.world),
            num_workers=cfg.num_workers,
            drop_last=True,
        )
    g = torch.Generator().manual_seed(seed)
    if not ctx.active:
        return DataLoader(
            data.train,
            batch_size=batch,
            shuffle=True,
            generator=g,
            num_workers=cfg.num_workers,
            drop_last=True,
        )
    shuffled = RandomSampler(data.train, generator=g)
    return DataLoader(
        data.train,
        batch_size=batch // ctx.world,
        sampler=ShardedBatchSampler(shuffled, batch, ctx.rank, ctx.world),
        generator=g,
        num_workers=cfg.num_workers,
        drop_last=True,
    )


def loader_state(loader: DataLoader) -> dict[str, torch.Tensor]:
    """Where the loader's order stands: the sampler's epoch and the shuffle generator.

    Saved with every checkpoint so that a resumed run draws the batches the
    uninterrupted run would have drawn (the P x K order depends on the epoch;
    the classification shuffle on a generator that advances every epoch).
    """
    out: dict[str, torch.Tensor] = {}
    epoch = getattr(loader.sampler, "epoch", None)
    if epoch is not None:
        out["loader.epoch"] = torch.tensor([int(epoch)], dtype=torch.int64)
    if loader.generator is not None:
        out["loader.generator"] = loader.generator.get_state()
    return out


def restore_loader(loader: DataLoader, state: dict[str, torch.Tensor]) -> None:
    """Undo :func:`loader_state` (keys it did not write are left alone)."""
    if "loader.epoch" in state:
        set_epoch(loader, int(state["loader.epoch"][0]))
    if "loader.generator" in state and loader.generator is not None:
        loader.generator.set_state(state["loader.generator"])


def training_outputs(out: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, feature) of a training-mode forward.

    The re-id head returns both; a user's own head (``model.blocks.head``)
    returns one tensor, its logits, which then also serve as the feature of
    the triplet term (weighted 0 for classification).
    """
    if isinstance(out, torch.Tensor):
        return out, out
    if isinstance(out, (tuple, list)) and len(out) == 2:
        logits, feat = out
        if isinstance(logits, torch.Tensor) and isinstance(feat, torch.Tensor):
            return logits, feat
    raise ModelError(
        "in training mode the model must return its logits, or (logits, feature) as the re-id "
        f"head does; it returned {type(out).__name__}"
    )


def loss_from_outputs(
    logits: torch.Tensor, feat: torch.Tensor, pids: torch.Tensor, cfg: TrainConfig, task: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """The prediction loss L of Eq. 1 (what PATROL's fine-tuning also minimises)."""
    weight = cfg.triplet_weight if task == "reid" else 0.0
    loss, parts = reid_loss(logits, feat, pids, cfg.label_smoothing, cfg.triplet_margin, weight)
    parts["loss"] = float(loss.detach())
    return loss, parts


def global_loss(
    logits: torch.Tensor, feat: torch.Tensor, pids: torch.Tensor, cfg: TrainConfig, task: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`loss_from_outputs` of the whole global batch (this rank's rows in one process).

    Batch-hard triplet mining must see every image of the P x K batch, so the
    ranks' outputs are gathered and each rank computes the same loss.
    """
    ctx = distributed.current()
    return loss_from_outputs(
        ctx.gather_rows(logits), ctx.gather_rows(feat), ctx.gather_rows(pids), cfg, task
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    sampler: Sampler[int] | object = loader.sampler
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
    stage: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place; checkpoints go to ``folder``.

    ``stage`` names the stage in progress lines and for ``PATROL_FAULT``
    (``recover`` when the plain recovery fine-tune runs through here).
    """
    ctx = distributed.current()
    dev = device()
    model.to(dev)
    ctx.broadcast_module(model)
    loader = make_loader(data, cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps = len(loader)
    params = list(model.parameters())

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        model.train()
        set_epoch(loader, epoch)
        for i, (x, pids, _) in enumerate(ctx.batches(loader)):
            set_lr(opt, cfg.lr, epoch + i / steps, cfg.warmup_epochs, cfg.epochs)
            x, pids = x.to(dev, non_blocking=True), pids.to(dev, non_blocking=True)
            with torch.autocast(dev.type, enabled=use_amp):
                logits, feat = training_outputs(model(x))
                loss, parts = global_loss(logits, feat, pids, cfg, data.task)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            ctx.average_grads(params)
            scaler.step(opt)
            scaler.update()
            rep.step(len(x) * ctx.world, ctx.mean_scalars(parts))

    def extra_state() -> dict[str, torch.Tensor]:
        out = loader_state(loader)
        if use_amp:
            out["scaler.scale"] = torch.tensor([scaler.get_scale()], dtype=torch.float64)
            out["scaler.growth_tracker"] = torch.tensor(
                [int(scaler.state_dict()["_growth_tracker"])], dtype=torch.int64
            )
        return out

    def restore_extra(state: dict[str, torch.Tensor]) -> None:
        restore_loader(loader, state)
        if use_amp and "scaler.scale" in state:
            sd = scaler.state_dict()
            sd["scale"] = float(state["scaler.scale"][0])
            sd["_growth_tracker"] = int(state["scaler.growth_tracker"][0])
            scaler.load_state_dict(sd)

    with ctx.sync_batchnorm(model):
        return run_stage(
            stage,
            folder,
            cfg.epochs,
            steps,
            epoch_fn,
            {"model": model},
            {"opt": opt},
            resume,
            extra_state=extra_state,
            restore_extra=restore_extra,
            quiet=quiet,
        )
