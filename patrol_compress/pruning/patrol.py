"""PATROL fine-tuning (Algorithm 1), one fused pass per batch.

Per batch the model minimises ``L + L_lip - beta * L_adv`` (Eq. 7 and 9) with
Adam, and the masks take a FISTA step on ``L + lambda1 ||m||_1 + lambda2
||m||_2`` (Eq. 1). Algorithm 1 writes three separate updates per batch; we take
one backward pass through the summed objective (the masks therefore also see the
Lipschitz and adversarial terms), which costs about a third of three passes
(``docs/measurements.md``, "Training overhead": fused 2.5x a plain step vs ~5x
unfused). The surrogate attacker, which cost more per step than the edge it
inverts, is computed faster without changing what it computes: each epoch's
fixed attacker is :func:`~patrol_compress.models.inversion.frozen_inverter`
(BNs folded, no weight gradients, CPU batch slices), the surrogate and the
no-grad edge pass that feeds its training run channels-last on CPU, and the
edge's eval-mode BNs take their masks inside one ``batch_norm``
(``tests/test_training_speed_equivalence.py`` checks each against the plain
computation). ``benchmarks/training_overhead.py``: a PATROL epoch at split 4
costs 2.15x a plain one on one CPU thread (3.70x before, same day).

The surrogate inversion network (Eq. 8) is trained on detached edge features
before the first epoch and then every ``adversary_every`` epochs (Algorithm 1
trains it at ``t % 10 == 0`` starting from t = 1, which would leave the first
nine epochs fighting an untrained attacker). ``adversarial.surrogate: suite``
replaces the paper's single mirror decoder by the attack suite's decoder
families (:class:`SuiteSurrogate`); the edge then maximises the error of the
strongest of them on each batch (see :class:`~patrol_compress.recipe.AdversarialConfig`
for why).

Budget steering: at the start of every epoch the masks' current ranking decides
which channels the budget would remove; those masks are capped by a bound that
falls linearly to exactly zero at ``steer_until`` of the stage (default 60%),
while FISTA keeps shrinking the rest; the remaining epochs train the network
with those channels already silent, so it adapts before anything is removed.
The plan is re-ranked each epoch, so a channel whose mask recovers can leave
the set (a late re-ranking only swaps channels already near zero). At the end
the planned masks are exactly zero, so removal changes nothing the network
computed (FISTA momentum restarts each epoch, a standard "restart" variant, so
the sparse iterate can be read).

Distributed runs (torchrun; :mod:`patrol_compress.distributed`): every rank
holds the whole model, masks, FISTA state and surrogate, trains on its share of
the global batch, and averages the gradients of the weights, the masks and the
surrogate after each backward pass, so the Adam and FISTA updates (deterministic
given the gradient) keep all of them identical on every rank; the loss of the
prediction term is computed on the gathered global batch (batch-hard triplet),
the cloud's and the surrogate's training-mode BatchNorms use global-batch
statistics, and the Lipschitz perturbation of each image is the one a single
process would draw.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from patrol_compress import distributed
from patrol_compress.data.base import DataBundle
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.inversion import InversionNet, frozen_inverter, reconstruction_l2
from patrol_compress.models.split import StageBlock, edge_shapes, edge_stage_blocks
from patrol_compress.models.split import split as split_model
from patrol_compress.privacy_config import BlackboxConfig
from patrol_compress.pruning.budget import EdgeBudget
from patrol_compress.pruning.fista import FISTA
from patrol_compress.pruning.masks import mask_parameters
from patrol_compress.pruning.structure import BlockStructure, ChannelStructure
from patrol_compress.recipe import PatrolConfig, Recipe
from patrol_compress.regularizers import freeze_bn_stats, fused_lipschitz
from patrol_compress.train.loop import EpochReporter, device, run_stage, set_lr
from patrol_compress.train.target import (
    global_loss,
    loader_state,
    make_loader,
    restore_loader,
    set_epoch,
    training_outputs,
)


class SuiteSurrogate(nn.Module):
    """The attack suite's decoder families as one surrogate, trained side by side.

    Each decoder is fitted on its own reconstruction loss (their sum, whose
    gradients do not mix); the edge's adversarial term is the error of the
    best decoder on the batch (:func:`fixed_attacker`).
    """

    def __init__(self, decoders: dict[str, nn.Module]) -> None:
        super().__init__()
        self.decoders = nn.ModuleDict(decoders)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructions of every decoder, stacked (K x N x C x H x W)."""
        return torch.stack([d(z) for d in self.decoders.values()])


Surrogate = InversionNet | SuiteSurrogate


@dataclass
class PatrolParts:
    model: BlockNet
    structure: ChannelStructure | BlockStructure | None
    surrogate: Surrogate | None


def build_surrogate(
    model: BlockNet, split: int, input_shape: tuple[int, int, int], width: int
) -> InversionNet:
    # No refinement convs: the surrogate runs forward and backward in every
    # PATROL step, and the full-resolution refinements doubled its cost.
    return InversionNet(edge_shapes(model, split, input_shape), max_width=width, refine=0)


SUITE_STATS_IMAGES = 1024
"""Training images whose edge features set the suite decoders' standardisation."""


@torch.no_grad()
def build_suite_surrogate(
    model: BlockNet, split: int, data: DataBundle, blackbox: BlackboxConfig
) -> SuiteSurrogate:
    """The suite's families for this edge, standardised on its features now.

    The statistics come from the first ``SUITE_STATS_IMAGES`` training images
    in the eval-mode edge, computed as the attack suite computes its own
    (:meth:`~patrol_compress.attacks.fit.Pairs.channel_stats`; deterministic,
    no loader randomness). A channel that dies later stays in the decoders'
    input as a constant, and each decoder's first BatchNorm re-scales features
    that a Lipschitz term shrinks, so the decoders need no rebuild during the
    stage.
    """
    from patrol_compress.attacks.decoders import DecoderSpec, build_decoders
    from patrol_compress.attacks.fit import Pairs

    input_shape = (data.channels, data.image_size, data.image_size)
    was_training = model.training
    model.eval()
    edge = edge_stage_blocks(model, split)
    dev = next(model.parameters()).device

    def features(x: torch.Tensor) -> torch.Tensor:
        z = x.to(dev)
        for b in edge:
            z = b(z)
        return z.float().cpu()

    n = min(len(data.train), SUITE_STATS_IMAGES)
    pairs = Pairs(Subset(data.train, range(n)), features, memory=True, cache=False)
    mean, std = pairs.channel_stats()
    model.train(was_training)
    shapes = edge_shapes(model, split, input_shape)
    spec = DecoderSpec(
        shapes=shapes,
        feature_shape=shapes[-1][1],  # the last edge block's output
        image_shape=input_shape,
        mean=mean,
        std=std,
    )
    return SuiteSurrogate(build_decoders(spec, blackbox))


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


def surrogate_fit_loss(surrogate: Surrogate, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """What fitting the surrogate minimises: Eq. 8 (summed over a suite's decoders)."""
    if isinstance(surrogate, SuiteSurrogate):
        return sum(
            (reconstruction_l2(x, d(z)) for d in surrogate.decoders.values()),
            x.new_zeros(()),
        )
    return reconstruction_l2(x, surrogate(z))


def fixed_attacker(surrogate: Surrogate) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The epoch's fixed attacker as ``(x, z) -> L_adv``, gradients flowing to ``z`` only.

    Mirror: Eq. 8 of :func:`frozen_inverter` (the same function, faster). Suite:
    the smallest Eq. 8 error among the decoders, i.e. the strongest attacker
    on this batch.
    """
    if isinstance(surrogate, SuiteSurrogate):
        frozen = [
            copy.deepcopy(d).eval().requires_grad_(False) for d in surrogate.decoders.values()
        ]
        return lambda x, z: torch.stack([reconstruction_l2(x, d(z)) for d in frozen]).min()
    inverter = frozen_inverter(surrogate)
    return lambda x, z: reconstruction_l2(x, inverter(z))


@torch.no_grad()
def edge_features(edge: list[StageBlock], x: torch.Tensor) -> torch.Tensor:
    """The edge's output for ``x`` without gradients (what the surrogate learns to invert).

    On CPU the images enter in channels-last memory format: oneDNN then runs
    the whole edge in that format, ~15% faster here, and hands the surrogate
    (itself channels-last on CPU) its input in the layout it wants. Same
    values up to float rounding.
    """
    z = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
    for b in edge:
        z = b(z)
    return z


def train_surrogate(
    surrogate: Surrogate,
    edge: list[StageBlock],
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    epochs: int,
    dev: torch.device,
) -> float:
    """Fit the surrogate on (edge features, image) pairs with the edge frozen; returns last loss."""
    ctx = distributed.current()
    params = list(surrogate.parameters())
    surrogate.train()
    last = 0.0
    for _ in range(epochs):
        for x, _, _ in ctx.batches(loader):
            x = x.to(dev)
            loss = surrogate_fit_loss(surrogate, x, edge_features(edge, x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ctx.average_grads(params)
            opt.step()
            last = float(loss.detach())
    return ctx.mean_scalars({"loss": last})["loss"]


@torch.no_grad()
def surrogate_psnr(
    surrogate: Surrogate,
    edge: list[StageBlock],
    loader: DataLoader,
    dev: torch.device,
    max_batches: int = 4,
) -> float:
    """Mean per-image PSNR (data range 1) of the surrogate's reconstructions.

    A suite reports its best decoder (highest mean PSNR), as the attack suite
    reports its strongest family. Distributed: each rank scores its share of
    the same batches and the per-image values are gathered, so the mean is
    over the images one process would score.
    """
    ctx = distributed.current()
    surrogate.eval()
    if isinstance(surrogate, SuiteSurrogate):
        decoders: list[nn.Module] = list(surrogate.decoders.values())
    else:
        decoders = [frozen_inverter(surrogate)]  # the same function, faster
    vals: list[list[torch.Tensor]] = [[] for _ in decoders]
    for i, (x, _, _) in enumerate(ctx.batches(loader)):
        if i >= max_batches:
            break
        x = x.to(dev)
        z = edge_features(edge, x)
        for k, d in enumerate(decoders):
            mse = (d(z) - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            vals[k].append(ctx.gather_rows(10 * torch.log10(1.0 / mse)).cpu())
    if not vals[0]:
        return float("nan")
    return max(float(torch.cat(v).mean()) for v in vals)


@dataclass
class StageSettings:
    """What differs between PATROL fine-tuning and the privacy-keeping recovery."""

    name: str
    epochs: int
    lr: float
    budget: EdgeBudget | None = None


class MaskSteering:
    """FISTA on the masks plus the budget steering described in the module docstring."""

    def __init__(
        self, parts: PatrolParts, cfg: PatrolConfig, budget: EdgeBudget | None, total_steps: int
    ) -> None:
        self.parts, self.cfg, self.budget, self.total = parts, cfg, budget, total_steps
        masks = mask_parameters(parts.model)
        self.fista = FISTA(masks, cfg.mask_lr, cfg.lambda1, cfg.lambda2) if masks else None
        self.marks: dict[nn.Parameter, torch.Tensor] = {}
        self.start: dict[int, torch.Tensor] = {}
        self.epoch_start = 0

    def begin_epoch(self, first_step: int) -> None:
        if self.fista is None:
            return
        self.fista.finalize()
        self.epoch_start = first_step
        if self.budget is not None and self.parts.structure is not None:
            self.marks = self.parts.structure.budget_caps(self.budget, self.cfg.tau)
            self.start = {id(p): p.detach().abs().clone() for p in self.marks}

    def before_step(self, step: int) -> None:
        if self.fista is None or not self.marks:
            return
        end = max(round(self.cfg.steer_until * self.total), 1)
        left = max(end - self.epoch_start, 1)
        frac = max(0.0, 1.0 - (step + 1 - self.epoch_start) / left)
        self.fista.set_caps(
            {
                p: torch.where(torch.isinf(m), m, self.start[id(p)] * frac)
                for p, m in self.marks.items()
            }
        )

    def finish(self, ran_epochs: bool) -> None:
        if self.fista is None:
            return
        self.fista.set_caps({})
        self.fista.finalize()
        if self.budget is not None and ran_epochs and self.parts.structure is not None:
            # The caps reached zero at the last step; make that exact for the removal.
            with torch.no_grad():
                for p, m in self.parts.structure.budget_caps(self.budget, self.cfg.tau).items():
                    p[m == 0] = 0.0


def patrol_finetune(
    parts: PatrolParts,
    data: DataBundle,
    recipe: Recipe,
    folder: Path,
    budget: EdgeBudget | None,
    resume: bool,
    quiet: bool = False,
    settings: StageSettings | None = None,
) -> tuple[list[dict[str, float]], float | None]:
    """Run Algorithm 1's loop on ``parts.model``.

    With masks inserted this is PATROL fine-tuning; on a pruned model without
    masks (``parts.structure`` None) the same objective, minus the mask terms,
    is the recovery fine-tune. Weights follow a cosine decay from ``lr``.
    Returns the per-epoch history and the surrogate's final reconstruction PSNR
    (None without a surrogate: ``metrics.json`` records null, since NaN is not JSON).
    """
    cfg, tcfg = recipe.patrol, recipe.train
    st = settings or StageSettings("patrol", cfg.epochs, cfg.lr, budget)
    ctx = distributed.current()
    dev = device()
    model = parts.model.to(dev)
    ctx.broadcast_module(model)
    split = cfg.split
    loader = make_loader(data, tcfg, recipe.seed + 1)
    steps = len(loader)
    steering = MaskSteering(parts, cfg, st.budget, max(st.epochs * steps, 1))
    mask_ids = {id(p) for p in mask_parameters(model)}
    weights = [p for p in model.parameters() if id(p) not in mask_ids and p.requires_grad]
    opt = torch.optim.Adam(weights, lr=st.lr, weight_decay=tcfg.weight_decay)
    edge = edge_stage_blocks(model, split)
    _, cloud = split_model(model, split)
    surrogate = parts.surrogate.to(dev) if parts.surrogate is not None else None
    if surrogate is not None:
        ctx.broadcast_module(surrogate)
        if dev.type == "cpu":
            # Same values, faster oneDNN convolutions (see models/inversion.py).
            surrogate.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    synced = [*weights, *mask_parameters(model)]
    s_opt = (
        torch.optim.Adam(surrogate.parameters(), lr=cfg.adversarial.adversary_lr)
        if surrogate is not None
        else None
    )
    alphas = cfg.lipschitz.alphas[:split]
    on_cpu = dev.type == "cpu"

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        steering.begin_epoch(epoch * steps)
        attacker = None
        if surrogate is not None and s_opt is not None:
            if epoch % cfg.adversarial.adversary_every == 0:
                model.eval()
                fit_epochs = cfg.adversarial.adversary_epochs
                if epoch == 0:
                    fit_epochs += cfg.adversarial.warmup_epochs
                train_surrogate(surrogate, edge, loader, s_opt, fit_epochs, dev)
            surrogate.eval()
            # The epoch's fixed attacker: the surrogate's eval-mode function with
            # no weight gradients (a mirror's BNs folded: same values, faster).
            attacker = fixed_attacker(surrogate)
        model.train()
        freeze_bn_stats(nn.ModuleList(edge))
        set_epoch(loader, epoch)
        for i, (x, pids, _) in enumerate(ctx.batches(loader)):
            set_lr(opt, st.lr, epoch + i / steps, 0, st.epochs)
            steering.before_step(epoch * steps + i)
            x, pids = x.to(dev), pids.to(dev)
            log: dict[str, float] = {}
            if cfg.lipschitz.enabled:
                noise = perturbed_count(len(x), cfg.lipschitz.sample_fraction) * x[0].numel()
                with ctx.rng_share(noise, on_cpu):
                    z, lip, ks = fused_lipschitz(
                        edge, x, alphas, cfg.lipschitz.sigma, cfg.lipschitz.sample_fraction
                    )
                log.update({f"k{j + 1}": k for j, k in enumerate(ks)})
            else:
                z = x
                for b in edge:
                    z = b(z)
                lip = x.new_zeros(())
            logits, feat = training_outputs(cloud(z))
            loss, parts_log = global_loss(logits, feat, pids, tcfg, data.task)
            total = loss + lip
            log.update(parts_log)
            log["lip"] = float(lip.detach())
            if attacker is not None:
                adv = attacker(x, z)
                total = total - cfg.adversarial.beta * adv
                log["adv"] = float(adv.detach())
            opt.zero_grad(set_to_none=True)
            if steering.fista is not None:
                steering.fista.zero_grad(set_to_none=True)
            total.backward()
            ctx.average_grads(synced)
            opt.step()
            if steering.fista is not None:
                steering.fista.step()
            log["loss"] = float(total.detach())
            rep.step(len(x) * ctx.world, ctx.mean_scalars(log))

    modules: dict[str, nn.Module] = {"model": model}
    optimizers: dict[str, torch.optim.Optimizer] = {"opt": opt}
    if steering.fista is not None:
        optimizers["fista"] = steering.fista
    if surrogate is not None and s_opt is not None:
        modules["surrogate"] = surrogate
        optimizers["surrogate_opt"] = s_opt
    # The P x K order of the surrogate's fit at the start of an epoch is the one
    # the previous epoch set; saving the loader's position makes a resumed run
    # fit on the same batches.
    with ctx.sync_batchnorm(model, surrogate):
        history = run_stage(
            st.name,
            folder,
            st.epochs,
            steps,
            epoch_fn,
            modules,
            optimizers,
            resume,
            extra_state=lambda: loader_state(loader),
            restore_extra=lambda state: restore_loader(loader, state),
            quiet=quiet,
        )
    steering.finish(st.epochs > 0)
    psnr = None
    if surrogate is not None:
        model.eval()
        psnr = surrogate_psnr(surrogate, edge, loader, dev)
    return history, psnr


def perturbed_count(batch: int, fraction: float) -> int:
    """How many images of a batch :func:`fused_lipschitz` perturbs (its own rule, restated).

    Used to skip the other ranks' share of the perturbation noise; if the two
    ever disagreed, distributed runs would only draw different (still valid) noise.
    """
    return max(1, min(batch, round(fraction * batch)))
