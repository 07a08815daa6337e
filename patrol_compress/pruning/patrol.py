"""PATROL fine-tuning (Algorithm 1) as a recipe stage: the checkpointed epoch runner
driving a :class:`~patrol_compress.PatrolPruner` with the recipe's data and loss.

Per batch the model minimises ``L + L_lip - beta * L_adv`` (Eq. 7 and 9) with
Adam, and the masks take a FISTA step on ``L + lambda1 ||m||_1 + lambda2
||m||_2`` (Eq. 1). Algorithm 1 writes three separate updates per batch; we take
one backward pass through the summed objective (the masks therefore also see the
Lipschitz and adversarial terms), which costs about a third of three passes
(``docs/measurements.md``, "Training overhead"). Everything PATROL-specific is
the pruner's (:mod:`patrol_compress.pruning.pruner`): the fused edge pass, the
surrogate and its schedule, FISTA and the budget steering, the dead-mask
refusal. What is left here is the recipe's: its loader, its loss (cross-entropy
and batch-hard triplet on the gathered global batch), Adam with the cosine
schedule, and :func:`~patrol_compress.train.loop.run_stage`, which checkpoints
the pruner's state with the weights after every epoch.

With masks this is PATROL fine-tuning; with a pruner made for recovery (no
masks) the same objective minus the mask terms is the recovery fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from patrol_compress import distributed
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.config.recipe import Recipe
from patrol_compress.data.base import DataBundle
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.pruning.budget import EdgeBudget
from patrol_compress.pruning.pruner import PatrolPruner, perturbed_count
from patrol_compress.pruning.steering import MaskSteering
from patrol_compress.pruning.structure import BlockStructure, ChannelStructure
from patrol_compress.pruning.surrogate import (
    SUITE_STATS_IMAGES,
    SuiteSurrogate,
    Surrogate,
    build_surrogate,
    edge_features,
    fixed_attacker,
    suite_surrogate,
    surrogate_fit_loss,
    surrogate_psnr,
    train_surrogate,
)
from patrol_compress.train.loop import EpochReporter, device, run_stage, set_lr
from patrol_compress.train.target import (
    global_loss,
    loader_state,
    make_loader,
    restore_loader,
    set_epoch,
    training_outputs,
)

__all__ = [
    "SUITE_STATS_IMAGES",
    "MaskSteering",
    "PatrolParts",
    "StageSettings",
    "SuiteSurrogate",
    "Surrogate",
    "build_suite_surrogate",
    "build_surrogate",
    "edge_features",
    "fixed_attacker",
    "make_surrogate",
    "patrol_finetune",
    "perturbed_count",
    "surrogate_fit_loss",
    "surrogate_psnr",
    "train_surrogate",
]


@dataclass
class PatrolParts:
    """A model with masks already inserted (``make_structure``) and its surrogate.

    The older way in: :func:`patrol_finetune` wraps them in a pruner
    (:meth:`PatrolPruner.adopt`); a ``structure`` of None is the recovery fine-tune.
    """

    model: BlockNet
    structure: ChannelStructure | BlockStructure | None
    surrogate: Surrogate | None


@dataclass
class StageSettings:
    """What differs between PATROL fine-tuning and the privacy-keeping recovery."""

    name: str
    epochs: int
    lr: float
    budget: EdgeBudget | None = None


@torch.no_grad()
def build_suite_surrogate(
    model: BlockNet, split: int, data: DataBundle, blackbox: BlackboxConfig
) -> SuiteSurrogate:
    """The suite's families for this edge, standardised on its features of the first
    ``SUITE_STATS_IMAGES`` training images (deterministic, no loader randomness)."""
    n = min(len(data.train), SUITE_STATS_IMAGES)
    shape = (data.channels, data.image_size, data.image_size)
    return suite_surrogate(model, split, Subset(data.train, range(n)), shape, blackbox)


def make_surrogate(model: BlockNet, recipe: Recipe, data: DataBundle) -> Surrogate | None:
    """The surrogate ``recipe.patrol.adversarial`` asks for (None when the term is off)."""
    cfg = recipe.patrol
    adv = cfg.adversarial
    if not adv.enabled:
        return None
    if adv.surrogate == "suite":
        return build_suite_surrogate(model, cfg.split, data, recipe.attack.blackbox)
    shape = (data.channels, data.image_size, data.image_size)
    return build_surrogate(model, cfg.split, shape, adv.adversary_width)


def _adopt(
    parts: PatrolParts, recipe: Recipe, data: DataBundle, st: StageSettings, steps: int
) -> PatrolPruner:
    structure = parts.structure
    if structure is not None:
        example = structure.example
    else:
        example = torch.zeros(1, data.channels, data.image_size, data.image_size)
    return PatrolPruner.adopt(
        parts.model,
        structure,
        parts.surrogate,
        recipe.patrol,
        recipe.patrol.split,
        st.budget,
        max(st.epochs * steps, 1),
        example,
        section="patrol",
    )


def patrol_finetune(
    parts: PatrolParts | PatrolPruner,
    data: DataBundle,
    recipe: Recipe,
    folder: Path,
    budget: EdgeBudget | None,
    resume: bool,
    quiet: bool = False,
    settings: StageSettings | None = None,
) -> tuple[list[dict[str, float]], float | None]:
    """Run Algorithm 1's loop: a :class:`PatrolPruner` driven by the recipe's epochs.

    Weights follow a cosine decay from ``lr``. Returns the per-epoch history and
    the surrogate's final reconstruction PSNR (None without a surrogate:
    ``metrics.json`` records null, since NaN is not JSON). The masks are
    finalized at the end (:meth:`PatrolPruner.finalize`, which refuses a block
    whose masks all reached zero).
    """
    cfg, tcfg = recipe.patrol, recipe.train
    st = settings or StageSettings("patrol", cfg.epochs, cfg.lr, budget)
    ctx = distributed.current()
    dev = device()
    loader = make_loader(data, tcfg, recipe.seed + 1)
    steps = len(loader)
    adopted = isinstance(parts, PatrolParts)
    pruner = _adopt(parts, recipe, data, st, steps) if isinstance(parts, PatrolParts) else parts
    if pruner.structure is not None and pruner.total_steps != max(st.epochs * steps, 1):
        planned, runs = pruner.total_steps, f"{st.epochs} x {steps}"
        raise RuntimeError(f"the pruner plans {planned} mask steps, the stage runs {runs}")
    pruner.probe = None  # the recipe judges accuracy on its own test set
    pruner.to(dev).broadcast()
    model = pruner.model
    opt = torch.optim.Adam(pruner.weights(), lr=st.lr, weight_decay=tcfg.weight_decay)

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        pruner.begin_epoch(loader)
        model.train()
        set_epoch(loader, epoch)
        for i, (x, pids, _) in enumerate(ctx.batches(loader)):
            set_lr(opt, st.lr, epoch + i / steps, 0, st.epochs)
            x, pids = x.to(dev), pids.to(dev)
            out, privacy = pruner(x)
            logits, feat = training_outputs(out)
            loss, parts_log = global_loss(logits, feat, pids, tcfg, data.task)
            total = loss + privacy
            if pruner.distiller is not None:  # patrol.recovery_distill
                total = total + pruner.distill_loss(x, out)
            log = _step_log(pruner.last_terms, parts_log)
            opt.zero_grad(set_to_none=True)
            pruner.backward(total)
            opt.step()
            pruner.step()
            log["loss"] = float(total.detach())
            rep.step(len(x) * ctx.world, ctx.mean_scalars(log))

    # The P x K order of the surrogate's fit at the start of an epoch is the one
    # the previous epoch set; saving the loader's position makes a resumed run
    # fit on the same batches.
    with pruner.sync_batchnorm():
        history = run_stage(
            st.name,
            folder,
            st.epochs,
            steps,
            epoch_fn,
            {"model": model},
            {"opt": opt},
            resume,
            extra_state=lambda: loader_state(loader),
            restore_extra=lambda state: restore_loader(loader, state),
            quiet=quiet,
            stateful={"pruner": pruner},
        )
    pruner.finalize()
    psnr = pruner.surrogate_psnr(loader)
    if adopted:
        pruner.close()  # nobody else holds this pruner to end its BN hooks
    return history, psnr


def _step_log(terms: dict[str, float], task: dict[str, float]) -> dict[str, float]:
    """One step's logged numbers, in the order the history has always had them."""
    log = {k: v for k, v in terms.items() if k not in ("lip", "adv", "adv_fit_psnr")}
    log.update(task)
    log["lip"] = terms["lip"]
    for k in ("adv", "adv_fit_psnr"):
        if k in terms:
            log[k] = terms[k]
    return log
