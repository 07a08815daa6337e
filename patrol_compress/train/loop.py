"""The epoch loop every training stage shares: progress, checkpoints, resume, NaN guard.

A stage is a function that runs one epoch (given an :class:`EpochReporter` for
the progress bar) plus the modules and optimizers that make up its state. The
loop resumes from the stage's last complete epoch, checkpoints after every epoch
and stops with a :class:`TrainingError` on a non-finite loss, leaving the last
good checkpoint in place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from patrol_compress.errors import TrainingError
from patrol_compress.train.checkpoint import load_checkpoint, save_checkpoint

console = Console(soft_wrap=True)


@dataclass
class EpochReporter:
    """Collects running means of losses and the image rate for the progress bar."""

    progress: Progress | None
    task: Any
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    start: float = field(default_factory=time.perf_counter)

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

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


EpochFn = Callable[[int, EpochReporter], None]


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
) -> list[dict[str, float]]:
    """Run ``epochs`` epochs of a stage with checkpoints in ``folder``; returns per-epoch means."""
    start_epoch = 0
    history: list[dict[str, float]] = []
    if resume:
        got = load_checkpoint(folder, modules, optimizers)
        if got is not None:
            start_epoch, extra, info = got
            history = list(info.get("history", []))
            if restore_extra is not None:
                restore_extra(extra)
            if not quiet:
                console.print(f"[{name}] resumed after epoch {start_epoch}/{epochs}")
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        for epoch in range(start_epoch, epochs):
            task = progress.add_task(f"{name} {epoch + 1}/{epochs}", total=steps_per_epoch, info="")
            reporter = EpochReporter(progress, task)
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
            save_checkpoint(
                folder,
                epoch + 1,
                modules,
                optimizers,
                extra_state() if extra_state else None,
                {"history": history},
            )
    return history


def lr_factor(progress: float, warmup: float, total: float) -> float:
    """Linear warm-up to 1, then cosine decay to 0.01 (progress measured in epochs)."""
    if warmup > 0 and progress < warmup:
        return 0.01 + 0.99 * progress / warmup
    span = max(total - warmup, 1e-9)
    t = min(max((progress - warmup) / span, 0.0), 1.0)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
