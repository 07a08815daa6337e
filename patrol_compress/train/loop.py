"""The epoch loop every training stage shares: progress, checkpoints, resume, NaN guard.

A stage is a function that runs one epoch (given an :class:`EpochReporter` for
the progress bar) plus the modules and optimizers that make up its state. The
loop resumes from the stage's last complete epoch, checkpoints after every epoch
and stops with a :class:`TrainingError` on a non-finite loss, leaving the last
good checkpoint in place.

A checkpoint holds everything that decides what the remaining epochs compute,
so a run killed at any moment and resumed ends with the same weights as an
uninterrupted one: modules and optimizers (FISTA's iterate, momentum and caps
live in its optimizer state), the stage's own extra state (loader position,
AMP scale) and every random generator the epochs draw from (torch CPU, here
also CUDA, numpy's and Python's global ones). The files are written atomically
(see :mod:`patrol_compress.train.checkpoint`). ``PATROL_FAULT`` makes a run die
at an exact step (see :mod:`patrol_compress.train.faults`), which is how the
crash-safety tests kill runs without depending on the machine's speed.

Distributed runs (:mod:`patrol_compress.distributed`): every rank runs the
epochs, rank 0 alone prints and writes checkpoints, and after each epoch the
ranks check that their modules are still bitwise identical.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from patrol_compress import distributed
from patrol_compress.contracts import CHECKPOINT_FILE
from patrol_compress.errors import ArtifactError, TrainingError
from patrol_compress.train.checkpoint import load_checkpoint, save_checkpoint
from patrol_compress.train.faults import fault_from_env

console = Console(soft_wrap=True)


@dataclass
class EpochReporter:
    """Collects running means of losses and the image rate for the progress bar."""

    progress: Progress | None
    task: TaskID
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    start: float = field(default_factory=time.perf_counter)
    after_step: Callable[[int], None] | None = None
    """Called with the 1-based step number once a step is counted (fault injection)."""

    def step(self, n_images: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            if not math.isfinite(v):
                raise TrainingError(
                    f"loss '{k}' became {v} at step {self.steps + 1}; stopped, "
                    "the last good checkpoint is kept (lower the learning rate?)"
                )
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += n_images
        if self.progress is not None:
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            loss = self.means().get("loss", 0.0)
            self.progress.update(self.task, advance=1, info=f"loss {loss:.3f} | {rate:.0f} img/s")
        if self.after_step is not None:
            self.after_step(self.steps)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


EpochFn = Callable[[int, EpochReporter], None]


class Stateful(Protocol):
    """Anything whose whole state is a flat dict of tensors (e.g. :class:`PatrolPruner`)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def _stateful_tensors(stateful: dict[str, Stateful]) -> dict[str, torch.Tensor]:
    return {f"state.{n}.{k}": v for n, obj in stateful.items() for k, v in obj.state_dict().items()}


def _restore_stateful(stateful: dict[str, Stateful], extra: dict[str, torch.Tensor]) -> None:
    for name, obj in stateful.items():
        prefix = f"state.{name}."
        obj.load_state_dict({k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)})


def run_stage(
    name: str,
    folder: Path,
    epochs: int,
    steps_per_epoch: int,
    epoch_fn: EpochFn,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    resume: bool,
    extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
    restore_extra: Callable[[dict[str, torch.Tensor]], None] | None = None,
    quiet: bool = False,
    stateful: dict[str, Stateful] | None = None,
) -> list[dict[str, float]]:
    """Run ``epochs`` epochs of a stage with checkpoints in ``folder``; returns per-epoch means.

    ``stateful`` objects (a :class:`~patrol_compress.PatrolPruner`: masks, FISTA,
    steering, surrogate) are checkpointed and restored with the modules, and
    compared across ranks after every epoch like them.
    """
    stateful = stateful or {}
    ctx = distributed.current()
    quiet = quiet or not ctx.main
    fault = fault_from_env()
    start_epoch = 0
    history: list[dict[str, float]] = []
    if resume:
        # Every rank reads the checkpoint rank 0 wrote in an earlier process.
        got = load_checkpoint(folder, modules, optimizers)
        if got is not None:
            start_epoch, extra, info = got
            if start_epoch > epochs:  # a checkpoint of a longer stage: not this run's
                raise ArtifactError(
                    f"{folder / CHECKPOINT_FILE}: records epoch {start_epoch} of a stage of "
                    f"{epochs} epochs; it is not this run's checkpoint (start again with --force)"
                )
            history = list(info.get("history", []))
            restore_rng(extra)
            if restore_extra is not None:
                restore_extra(extra)
            _restore_stateful(stateful, extra)
            if not quiet:
                console.print(f"[{name}] resumed after epoch {start_epoch}/{epochs}")
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    # Not a terminal (a log file, CI): the per-epoch lines below only, no bars.
    bars = not quiet and console.is_terminal
    with Progress(*columns, console=console, disable=not bars, transient=False) as progress:
        for epoch in range(start_epoch, epochs):
            task = progress.add_task(f"{name} {epoch + 1}/{epochs}", total=steps_per_epoch, info="")
            hook = None if fault is None else functools.partial(fault.check, name, epoch + 1)
            reporter = EpochReporter(progress, task, after_step=hook)
            epoch_fn(epoch, reporter)
            means = reporter.means()
            means["images_per_s"] = reporter.images / max(
                time.perf_counter() - reporter.start, 1e-9
            )
            history.append(means)
            if not quiet and not console.is_terminal:
                # Logs and CI see no live bar: one line per epoch instead.
                shown = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
                console.print(
                    f"[{name}] epoch {epoch + 1}/{epochs}: {shown}", highlight=False, markup=False
                )
            state = _stateful_tensors(stateful)
            ctx.check_same(modules, f"{name} epoch {epoch + 1}", state)
            extra = {**rng_state(), **(extra_state() if extra_state else {}), **state}
            info = {"history": list(history)}
            save = functools.partial(
                save_checkpoint, folder, epoch + 1, modules, optimizers, extra, info
            )
            ctx.run_on_main(save)  # rank 0 writes; the others wait for it
    return history


def rng_state() -> dict[str, torch.Tensor]:
    """numpy's, Python's and CUDA's generators as tensors (checkpoint.py saves torch's CPU one)."""
    out: dict[str, torch.Tensor] = {}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    if kind == "MT19937":
        out["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        out["rng.numpy.pos"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
        out["rng.numpy.gauss"] = torch.tensor([cached], dtype=torch.float64)
    version, words, gauss_next = random.getstate()
    out["rng.python.words"] = torch.tensor([version, *words], dtype=torch.int64)
    out["rng.python.gauss"] = torch.tensor(
        [float("nan") if gauss_next is None else gauss_next], dtype=torch.float64
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    """Undo :func:`rng_state` (generators missing from an older checkpoint are left alone)."""
    if "rng.numpy.keys" in state:
        pos, has_gauss = (int(v) for v in state["rng.numpy.pos"].tolist())
        np.random.set_state(
            (
                "MT19937",
                state["rng.numpy.keys"].numpy().astype(np.uint32),
                pos,
                has_gauss,
                float(state["rng.numpy.gauss"][0]),
            )
        )
    if "rng.python.words" in state:
        version, *words = (int(v) for v in state["rng.python.words"].tolist())
        gauss = float(state["rng.python.gauss"][0])
        random.setstate((version, tuple(words), None if math.isnan(gauss) else gauss))
    if "rng.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng.cuda"])


def set_lr(
    opt: torch.optim.Optimizer, base_lr: float, progress: float, warmup: float, total: float
) -> None:
    """The one learning-rate schedule of every training loop: ``base_lr x lr_factor(...)``.

    ``progress`` counts epochs (``epoch + step / steps_per_epoch``), so the rate
    changes every step, not only at epoch boundaries.
    """
    lr = base_lr * lr_factor(progress, warmup, total)
    for group in opt.param_groups:
        group["lr"] = lr


def lr_factor(progress: float, warmup: float, total: float) -> float:
    """Linear warm-up to 1, then cosine decay to 0.01 (progress measured in epochs)."""
    if warmup > 0 and progress < warmup:
        return 0.01 + 0.99 * progress / warmup
    span = max(total - warmup, 1e-9)
    t = min(max((progress - warmup) / span, 0.0), 1.0)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def device() -> torch.device:
    """This process's training device: CUDA (the rank's GPU under torchrun) when available."""
    return distributed.current().device
