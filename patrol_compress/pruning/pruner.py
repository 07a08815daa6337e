"""PatrolPruner: the one PATROL engine, driven by your own loop and by the recipe pipeline.

Your network keeps its weights, its head and its forward. The pruner inserts
the soft masks into it, gives the privacy terms (or one fused pass returning
the output and the terms), steps the masks with FISTA and steers them into
the edge budget (:mod:`.steering`), plays the surrogate attacker on its epoch
schedule (:mod:`.adversary`), and removes the masked channels through
torch-pruning's dependency graph, checking that the pruned network computes
what the masked one did. The README's "Python API" shows the loop; the recipe
pipeline drives the same object (``pruning/patrol.py``: ``patrol_finetune`` is
that loop inside the checkpointed epoch runner with the recipe's loss), so a
seed gives the same masks, removal and weights through either door
(``tests/test_template_pruner.py``).

The steps of a loop, and when the budget caps move: the caps of step ``s`` are
applied before its forward (by the model's pre-hook, or by ``pruner(x)``), and
after ``step()`` only marked as pending, so that ``begin_epoch`` (which plans
anew, and refits the surrogate on unclamped masks) sees the masks FISTA left,
as Algorithm 1 with budget steering does. Without ``begin_epoch`` a plan is
made every ``replan_every`` steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

from patrol_compress import distributed
from patrol_compress.config.base import problems
from patrol_compress.config.privacy import BlackboxConfig
from patrol_compress.config.recipe import DistillSettings, PatrolSettings
from patrol_compress.errors import (
    ModelError,
    PatrolWarning,
    RecipeError,
    TrainingError,
    UsageError,
    first_line,
)
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import StageBlock, edge_modules, edge_stage_blocks
from patrol_compress.models.split import split as split_model
from patrol_compress.pruning.adversary import Adversary
from patrol_compress.pruning.budget import EdgeBudget
from patrol_compress.pruning.distill import Distiller
from patrol_compress.pruning.hooks import freeze_edge_bn, pending_hook
from patrol_compress.pruning.inputs import (
    BlocksLike,
    BudgetLike,
    Names,
    budget_config,
    check_model,
    check_terms,
    device_of,
    settings_of,
    sync_into,
    view_of,
    whole_steps,
)
from patrol_compress.pruning.inputs import edge_budget as resolve_edge_budget
from patrol_compress.pruning.masks import mask_parameters, mask_summary
from patrol_compress.pruning.probe import AgreementProbe
from patrol_compress.pruning.steering import MaskSteering, mask_lr_for, schedule_warning
from patrol_compress.pruning.structure import (
    BlockStructure,
    ChannelStructure,
    Removal,
    make_structure,
)
from patrol_compress.pruning.surrogate import build_surrogate, suite_surrogate, surrogate_psnr
from patrol_compress.regularizers import fused_lipschitz
from patrol_compress.uplink import find_uplink, insert_uplink

Structure = ChannelStructure | BlockStructure


class PatrolPruner:
    """PATROL on a ``nn.Module`` inside a training loop: yours, or the recipe pipeline's.

    Args:
        model: the network; pruned in place (its trained weights are the start).
        example_inputs: a batch the model takes (traced by torch-pruning, used
            for the exactness check and as the export's input shape).
        split: where the edge ends: a module's dotted path (``"features.6"``; the
            forward is traced and must pass only that module's output on), a
            stage's index (1 = after the first stage) or a stage block's name.
        budget: the edge's limits after pruning: parameters (int), a share of
            the unpruned edge's parameters (a float in (0, 1)), or a mapping
            with ``fit_split: K`` / ``params: N`` / ``bytes: N`` and/or ``macs:
            N`` and ``latency_ms: X`` (a recipe's ``patrol.budget``;
            ``fit_split``: the unpruned edge at a shallower split, an index or,
            for a traced model, a module path). All limits given must hold.
            None: masks at zero are removed, no size is enforced.
        blocks: how the model divides into stages, when ``split`` is an index:
            its top-level children grouped as ``{"stem": [...], "stages":
            [[...], ...], "head": [...]}`` (its forward must run them in that
            order), or the module paths each stage ends with
            (``["features.3", "features.6"]``, traced). A :class:`BlockNet`
            brings its own.
        total_steps: how many times you will call :meth:`step` before
            :meth:`prune`. The budget steering silences the planned channels by
            ``config.steer_until`` of them, and ``config.mask_lr`` (unless
            given) follows from it: a total pull on the masks near 0.6 of their
            start (:func:`~patrol_compress.pruning.steering.mask_lr_for`).
        replan_every: without :meth:`begin_epoch`, steps between re-rankings of
            the planned channels; default a tenth of ``total_steps``.
        config: PATROL's settings (:class:`~patrol_compress.config.recipe.PatrolSettings`,
            a recipe's ``patrol:`` section without the job's fields): mask_lr,
            lambda1/2, tau, mask_init, granularity, round_to, rank,
            steer_until, ``lipschitz`` and ``adversarial``. Default: plain
            budget-steered pruning (both privacy terms off, the shipped recipes'
            choice); giving a term's section turns it on.
        surrogate: the attacker the adversarial term plays against (default:
            the paper's mirror decoder of this edge, or with ``surrogate:
            suite`` the attack suite's decoders, built when first needed).
        section: how errors name the settings: None for these arguments
            (``split``, ``config.mask_lr``), ``"patrol"`` for a recipe's section.

    Example::

        pruner = PatrolPruner(net, torch.rand(2, 3, 32, 32), split="features.6",
                              budget=20_000, total_steps=300)
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        split: int | str,
        budget: BudgetLike | None = None,
        blocks: BlocksLike | None = None,
        total_steps: int | None = None,
        replan_every: int | None = None,
        config: PatrolSettings | Mapping[str, Any] | None = None,
        surrogate: nn.Module | None = None,
        *,
        section: str | None = None,
    ) -> None:
        names = Names(section)
        settings = settings_of(config)
        model, example = check_model(model, example_inputs)
        cfg, fit_path = budget_config(budget) if budget is not None else (None, None)
        view, k = view_of(model, blocks, split, fit_path, example, names)
        check_terms(settings, k, names)
        self._setup(model, view, example, k, settings, names)
        self._insert_uplink()
        value_bits = settings.uplink.bits or 32
        edge_budget = resolve_edge_budget(
            cfg, fit_path, view, k, self.input_shape, names, value_bits
        )
        total_steps = whole_steps(total_steps, "total_steps")
        if edge_budget is not None and total_steps is None:
            raise UsageError(
                "total_steps: needed with a budget (the steering silences the planned "
                "channels over the steps you will take); pass epochs x batches per epoch"
            )
        total_steps = whole_steps(total_steps, "total_steps")
        replan_every = whole_steps(replan_every, "replan_every")
        structure = self._insert_masks()
        if not isinstance(cfg, EdgeBudget) and edge_budget is not None:
            structure.check(edge_budget)
        self._start_masks(structure, edge_budget, total_steps, replan_every)
        self._attach_given(surrogate)
        self._engage()
        if total_steps is not None:
            self._warn_schedule(total_steps)

    # ------------------------------------------------------------ other doors

    @classmethod
    def adopt(
        cls,
        model: BlockNet,
        structure: Structure | None,
        surrogate: nn.Module | None,
        config: PatrolSettings,
        split: int,
        budget: EdgeBudget | None,
        total_steps: int,
        example_inputs: torch.Tensor,
        *,
        section: str | None = None,
    ) -> PatrolPruner:
        """A pruner around masks already inserted by ``make_structure`` (or none: recovery)."""
        self = cls.__new__(cls)
        example = example_inputs.detach()
        self._setup(model, model, example, split, settings_of(config), Names(section))
        if structure is None:
            self._start_recovery()
        else:
            self._start_masks(structure, budget, total_steps, None)
        self._attach_given(surrogate)
        self._engage()
        return self

    @classmethod
    def for_recovery(
        cls,
        model: nn.Module,
        example_inputs: torch.Tensor,
        split: int | str,
        config: PatrolSettings | Mapping[str, Any] | None = None,
        surrogate: nn.Module | None = None,
        blocks: BlocksLike | None = None,
        *,
        section: str | None = None,
    ) -> PatrolPruner:
        """A pruner over an already pruned model: the privacy terms of a recovery fine-tune.

        What :meth:`prune` leaves behind, for a model loaded from disk (the
        recipe's recover stage): no masks, the edge's BatchNorms on running
        statistics, a fresh surrogate on the pruned edge.

        Example::

            pruner = PatrolPruner.for_recovery(pruned, x[:2], split="features.6",
                                               config={"lipschitz": {"alphas": [0.01]}})
        """
        self = cls.__new__(cls)
        names = Names(section)
        settings = settings_of(config)
        model, example = check_model(model, example_inputs)
        view, k = view_of(model, blocks, split, None, example, names)
        check_terms(settings, k, names)
        self._setup(model, view, example, k, settings, names)
        self._start_recovery()
        self._attach_given(surrogate)
        self._engage()
        return self

    # ------------------------------------------------------------------ setup

    def _setup(
        self,
        model: nn.Module,
        view: BlockNet,
        example: torch.Tensor,
        split: int,
        settings: PatrolSettings,
        names: Names,
    ) -> None:
        self.model, self.net, self.example, self.split = model, view, example, split
        self.cfg, self.names = settings, names
        c, h, w = (int(d) for d in example.shape[1:])
        self.input_shape = (c, h, w)
        self.budget: EdgeBudget | None = None
        self.removal: Removal | None = None
        every = names.field("adversarial.adversary_every")
        self.adversary = Adversary(settings.adversarial, self._build_surrogate, every)
        self.last_terms: dict[str, float] = {}
        self.probe: AgreementProbe | None = AgreementProbe()
        self.epoch = 0
        self._explicit = False
        self._warned_online = False
        self._bn_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._model_hook: torch.utils.hooks.RemovableHandle | None = None
        self.structure: Structure | None = None
        self.steering: MaskSteering | None = None
        self.total_steps, self.replan_every, self.mask_lr = 1, 1, 0.0
        self.steps = 0
        self._pending: str | None = None
        self._finished = True
        self.distiller: Distiller | None = None
        self._partition()

    def _partition(self) -> None:
        """The edge as Lipschitz blocks and the cloud, over the view's current children."""
        self._edge: list[StageBlock] = edge_stage_blocks(self.net, self.split)
        self._cloud = split_model(self.net, self.split)[1]
        if self.distiller is not None:
            self.distiller.attach(self.net)  # the crossing's module may have changed

    def _insert_uplink(self) -> None:
        """Quantize what crosses the split (``config.uplink.bits``): a child of the model.

        Calibrated on the first training batch (or by the recipe on its data,
        :func:`~patrol_compress.uplink.calibrate_uplink`), before its range learns.
        """
        bits = self.cfg.uplink.bits
        if bits is None or find_uplink(self.net) is not None:
            return
        if self.net is not self.model:
            raise ModelError(
                f"{self.names.field('uplink.bits')}: a quantized uplink is added as a child of the "
                "network, so the network must be a BlockNet whose forward runs its children (a "
                "recipe's model, or patrol_compress.models.build_model); this model runs its own "
                "forward"
            )
        up = self.cfg.uplink
        insert_uplink(self.net, self.split, bits, self.input_shape, up.init_quantile, up.noise)
        self._partition()

    def _insert_masks(self) -> Structure:
        flags = _flags(self.model, self.net)
        cfg = self.cfg
        try:
            structure = make_structure(
                cfg.granularity,
                self.net,
                self.split,
                cfg.mask_init,
                self.example.to(device_of(self.model)),
                cfg.round_to,
                cfg.rank,
            )
        except ModelError:
            raise
        except Exception as exc:  # torch-pruning's tracer raises many kinds
            raise ModelError(f"torch-pruning cannot trace the model: {first_line(exc)}") from None
        finally:
            _restore(flags)
        sync_into(self.model, self.net)
        self._partition()
        return structure

    def _start_masks(
        self,
        structure: Structure,
        budget: EdgeBudget | None,
        total_steps: int | None,
        replan_every: int | None,
    ) -> None:
        cfg = self.cfg
        if cfg.mask_lr is None and total_steps is None:
            raise UsageError(
                f"total_steps: needed to choose the masks' rate ({self.names.field('mask_lr')} "
                "is not given); pass epochs x batches per epoch"
            )
        self.structure = structure
        self.budget = budget
        self.total_steps = total_steps or 1
        self.mask_lr = (
            cfg.mask_lr
            if cfg.mask_lr is not None
            else mask_lr_for(self.total_steps, cfg.lambda1, cfg.lambda2, cfg.mask_init)
        )
        self.replan_every = max(1, replan_every or self.total_steps // 10 or 1)
        self.steering = MaskSteering(
            mask_parameters(self.net),
            structure,
            budget,
            self.total_steps,
            self.mask_lr,
            cfg.lambda1,
            cfg.lambda2,
            cfg.tau,
            cfg.steer_until,
        )
        self.steps = 0
        self._pending = "epoch"
        self._finished = False

    def _start_recovery(self) -> None:
        """No masks from here on (the step count and the masks' rate stay for the summary)."""
        self.structure = None
        self.steering = None
        self._pending = None
        self._finished = True

    def _warn_schedule(self, total_steps: int) -> None:
        cfg = self.cfg
        line = schedule_warning(
            self.mask_lr,
            cfg.lambda1,
            cfg.lambda2,
            cfg.mask_init,
            total_steps,
            self.names.field("mask_lr"),
        )
        if line is not None and mask_parameters(self.net):
            warnings.warn(line, PatrolWarning, stacklevel=3)

    def _engage(self) -> None:
        """Freeze the edge's BN statistics and let the model's forward apply pending caps."""
        self._freeze_edge_bn()
        if self._model_hook is None:
            self._model_hook = self.model.register_forward_pre_hook(pending_hook(self, self.model))

    def _freeze_edge_bn(self) -> None:
        for hook in self._bn_hooks:
            hook.remove()
        self._bn_hooks = freeze_edge_bn(self._edge)

    def close(self) -> None:
        """Give the edge's BatchNorms back their train/eval behaviour (after recovery).

        Example::

            model = pruner.prune(); ...recovery...; pruner.close()
        """
        for hook in self._bn_hooks:
            hook.remove()
        self._bn_hooks = []
        if self._model_hook is not None:
            self._model_hook.remove()
            self._model_hook = None
        if self.distiller is not None:
            self.distiller.close()
            self.distiller = None

    def to(self, device: torch.device | str) -> PatrolPruner:
        """Move the model and the surrogate to ``device``.

        Example::

            pruner.to("cuda")
        """
        dev = torch.device(device)
        self.model.to(dev)
        if self.net is not self.model:
            self.net.to(dev)
        if self.adversary.surrogate is not None:
            self.adversary.place(self.adversary.surrogate, dev)
        if self.distiller is not None:
            self.distiller.to(dev)
        return self

    def broadcast(self) -> None:
        """Under torchrun: every rank takes rank 0's weights, masks and surrogate (all ranks call).

        Example::

            pruner.to(device).broadcast()
        """
        ctx = distributed.current()
        ctx.broadcast_module(self.model)
        if self.surrogate is not None:
            ctx.broadcast_module(self.surrogate)

    def sync_batchnorm(self) -> AbstractContextManager[None]:
        """Under torchrun: training-mode BNs of the model and surrogate use global-batch statistics.

        Example::

            with pruner.sync_batchnorm():
                train()
        """
        return distributed.current().sync_batchnorm(self.model, self.surrogate)

    # ---------------------------------------------------------------- surrogate

    @property
    def surrogate(self) -> nn.Module | None:
        """The attacker the adversarial term plays against (None until built, or term off)."""
        return self.adversary.surrogate

    def _attach_given(self, surrogate: nn.Module | None) -> None:
        if surrogate is None:
            return
        if not self.cfg.adversarial.enabled:
            raise UsageError(
                f"surrogate: given, but {self.names.field('adversarial')} is off; enable it"
            )
        self.adversary.place(surrogate, device_of(self.model))

    def _build_surrogate(self, images: torch.Tensor | None) -> nn.Module:
        adv = self.cfg.adversarial
        if adv.surrogate == "mirror":
            return build_surrogate(self.net, self.split, self.input_shape, adv.adversary_width)
        if images is None:
            raise UsageError(
                "begin_epoch: the suite surrogate standardises on the edge's features of "
                "your images; pass the epoch's batches (your loader)"
            )
        dataset = TensorDataset(images.detach().cpu())
        return suite_surrogate(self.net, self.split, dataset, self.input_shape, BlackboxConfig())

    # --------------------------------------------------------------- training

    def weights(self) -> list[nn.Parameter]:
        """The model's trainable parameters without the masks: give these to your optimizer.

        Example::

            opt = torch.optim.Adam(pruner.weights(), lr=1e-3)
        """
        masks = {id(p) for p in mask_parameters(self.net)}
        return [p for p in self.model.parameters() if id(p) not in masks and p.requires_grad]

    def begin_epoch(self, batches: Iterable[Any] | None = None) -> None:
        """Start an epoch: re-rank the budget plan, refit the surrogate when one is due.

        ``batches`` (your loader: image batches or ``(images, ...)`` tuples) is
        what the surrogate is fitted on: at the first epoch for
        ``adversary_epochs + warmup_epochs`` passes, then every
        ``adversary_every`` epochs for ``adversary_epochs`` passes (the
        recipes' schedule); not needed when the adversarial term is off.

        Example::

            for epoch in range(epochs):
                pruner.begin_epoch(loader)
                for x, y in loader: ...
        """
        self._explicit = True
        if self.steering is not None and not self._finished:
            self.steering.begin_epoch(self.steps)
        if self.cfg.adversarial.enabled:
            flags = _flags(self.model, self.net)
            self.model.eval()  # the surrogate learns the deployed (eval-mode) edge
            self.net.eval()
            try:
                self.adversary.begin_epoch(self.epoch, self._edge, batches, device_of(self.model))
            finally:
                _restore(flags)
        self.epoch += 1
        self._pending = "caps" if self.steering is not None and not self._finished else None

    def forward(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The model's output for ``x`` and PATROL's privacy terms, from one pass over the edge.

        The output is what the model returns (in its current train/eval mode);
        the terms are :meth:`privacy_loss`'s. Calling the pruner is the same.

        Example::

            out, privacy = pruner(x)
            loss = F.cross_entropy(out, y) + privacy
        """
        out, privacy = self._objective(x, with_cloud=True)
        return out, privacy

    __call__ = forward

    def privacy_loss(self, x: torch.Tensor) -> torch.Tensor:
        """PATROL's privacy terms for the batch ``x``: add them to your task loss.

        ``L_lip - beta * L_adv`` (Eq. 4-9): the Lipschitz term of the edge's
        stages (``config.lipschitz``) minus ``beta`` times the reconstruction
        error of the surrogate attacker (``config.adversarial``). The terms'
        values are in :attr:`last_terms`. Zero when both are disabled. Runs the
        edge once more than your ``model(x)``; :meth:`forward` does both in one.

        Example::

            loss = F.cross_entropy(model(x), y) + pruner.privacy_loss(x)
        """
        return self._objective(x, with_cloud=False)[1]

    def _objective(self, x: torch.Tensor, with_cloud: bool) -> tuple[Any, torch.Tensor]:
        self._apply_pending()
        if self.probe is not None:
            self.probe.see(self.model, x)
        lip_cfg, adv_cfg = self.cfg.lipschitz, self.cfg.adversarial
        terms: dict[str, float] = {}
        if lip_cfg.enabled:
            noise = perturbed_count(len(x), lip_cfg.sample_fraction) * x[0].numel()
            with distributed.current().rng_share(noise, x.device.type == "cpu"):
                z, lip, ks = fused_lipschitz(
                    self._edge,
                    x,
                    lip_cfg.alphas[: self.split],
                    lip_cfg.sigma,
                    lip_cfg.sample_fraction,
                )
            terms.update({f"k{j + 1}": k for j, k in enumerate(ks)})
        else:
            z = x
            for block in self._edge:
                z = block(z)
            lip = x.new_zeros(())
        out = self._cloud(z) if with_cloud else None
        total = lip
        terms["lip"] = float(lip.detach())
        if adv_cfg.enabled:
            adv = self.adversary.loss(x, z, device_of(self.model))
            total = total - adv_cfg.beta * adv
            terms["adv"] = float(adv.detach())
            if self.adversary.fit_psnr is not None:
                terms["adv_fit_psnr"] = self.adversary.fit_psnr
        self.last_terms = terms
        return out, total

    def distill_from(
        self, teacher: nn.Module, config: DistillSettings | Mapping[str, Any] | None = None
    ) -> PatrolPruner:
        """Distil ``teacher`` into the model: :meth:`distill_loss` then gives the loss.

        ``teacher`` is the unpruned network (a copy of your model before the
        pruner touched it, or ``patrol_compress.run.load_run_model`` of a
        run's ``target/``); the feature terms need both it and your model to
        be :class:`BlockNet` s (a recipe's or ``build_model``'s, split at the
        same stage), the logit term takes any model whose output holds the
        class scores. It is
        frozen: eval mode, ``requires_grad`` off, run under ``torch.no_grad``
        and moved with :meth:`to`. ``config``: the loss's settings
        (:class:`~patrol_compress.config.recipe.DistillSettings`:
        ``temperature``, ``logit_weight``, ``feature_weight``, ``feature_at``;
        default: the logit term alone, T = 4). Returns the pruner. The loss's
        effect on accuracy and on leakage has not been measured.

        Example::

            teacher = copy.deepcopy(net)             # before PatrolPruner(net, ...)
            pruner.distill_from(teacher, {"temperature": 4.0})
        """
        settings = _distill_settings(config)
        if self.distiller is not None:
            self.distiller.close()
        own = self.net is not self.model
        self.distiller = Distiller(teacher, settings, self.split, self.net, own_forward=own)
        self.distiller.to(device_of(self.model))
        return self

    def distill_loss(self, x: torch.Tensor, output: Any) -> torch.Tensor:
        """The distillation loss of the batch ``x``: add it to your task loss.

        ``output`` is what the model (or :meth:`forward`) returned for ``x``,
        just before: its logits, or ``(logits, feature)`` as the re-id head
        returns in training mode. The teacher (:meth:`distill_from`) runs on
        ``x`` without gradients; the student's crossing and head input are the
        ones its forward on ``x`` produced (caught by hooks), so call this
        right after that forward. The terms: ``logit_weight`` x KL of the
        T-softened scores x T^2 (the identity scores for re-id), plus
        ``feature_weight`` x the attention-map distance at the crossing and/or
        the embedding distance (:class:`~patrol_compress.config.recipe.DistillSettings`).
        Their values are in :attr:`last_terms` (``kd``, ``kd_crossing``,
        ``kd_embedding``). The gradient reaches the student only.

        Example::

            out, privacy = pruner(x)
            loss = F.cross_entropy(out, y) + privacy + pruner.distill_loss(x, out)
        """
        if self.distiller is None:
            raise UsageError("distill_loss: no teacher; call pruner.distill_from(teacher) first")
        loss = self.distiller.loss(x, output)
        self.last_terms.update(self.distiller.last_terms)
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; under torchrun, then the gradients averaged over ranks.

        The weights' and the masks' gradients are averaged in one all-reduce
        (what DistributedDataParallel would do; the pruner runs the edge and
        the cloud as separate calls, which DDP's hooks do not follow). In one
        process it is exactly ``loss.backward()``.

        Example::

            opt.zero_grad(); pruner.backward(loss); opt.step(); pruner.step()
        """
        loss.backward()
        distributed.current().average_grads([*self.weights(), *mask_parameters(self.net)])

    def _apply_pending(self) -> None:
        """The budget caps of the next step (and, without begin_epoch, a new plan when due)."""
        pending, self._pending = self._pending, None
        if pending is None or self.steering is None or self._finished:
            return
        if pending == "epoch":
            self.steering.begin_epoch(self.steps)
        self.steering.before_step(self.steps)

    def step(self) -> None:
        """One FISTA step on the masks (after your ``backward``), with the budget steering.

        Clears the masks' gradients afterwards (your optimizer does not hold
        them). Does nothing after :meth:`prune`.

        Example::

            loss.backward(); opt.step(); pruner.step()
        """
        if self.steering is None or self.steering.fista is None:
            return
        self._apply_pending()
        self.steering.fista.step()
        self.steering.fista.zero_grad(set_to_none=True)
        self.steps += 1
        self._finished = False
        due = not self._explicit and self.steps % self.replan_every == 0
        self._pending = "epoch" if due else "caps"

    # ---------------------------------------------------------------- removal

    def finalize(self) -> None:
        """End mask training: FISTA's sparse iterate, the planned channels exactly zero.

        Refuses (:class:`TrainingError`) when every mask of a block is <= tau:
        removal would cut the whole block and the network would output
        constants. :meth:`prune` calls it; call it yourself to save the masked
        model first.

        Example::

            pruner.finalize(); torch.save(model.state_dict(), "masked.pt")
        """
        if self.structure is None:
            return
        if not self._finished and self.steering is not None:
            self.steering.finish(self.steps > 0)
        self._finished = True
        self._pending = None
        dead = [b for b, s in mask_summary(self.net, self.cfg.tau).items() if s["sparsity"] >= 1]
        if dead:
            n = self.names
            where = f"{n.section}: " if n.section else ""
            raise TrainingError(
                f"{where}every mask of {', '.join(dead)} is <= tau after {self.steps} mask "
                f"steps, so nothing would pass; lower {n.field('mask_lr')} or "
                f"{n.field('lambda1')}/lambda2 (each step shrinks a mask by about mask_lr x "
                f"(lambda1 + lambda2 x mask)){n.rerun}"
            )

    def prune(self) -> nn.Module:
        """Remove the masked channels (and fold the masks); returns the model, pruned in place.

        Masks at or below ``config.tau`` go; with a budget, the lowest-ranked
        channels go until the edge fits. torch-pruning removes them with their
        coupled layers, and the result must compute what the masked model did
        (eval mode, relative difference <= 1e-5) or nothing is kept. Make a new
        optimizer afterwards: the pruned layers have new parameters. The
        privacy terms stay usable for a recovery fine-tune (a fresh surrogate
        on the pruned edge, its schedule restarted).

        Example::

            model = pruner.prune()
            print(pruner.edge_params(), pruner.removal.as_dict())
        """
        if self.structure is None:
            return self.model
        self.finalize()
        flags = _flags(self.model, self.net)
        self.model.eval()
        self.net.eval()
        try:
            self.removal = self.structure.remove(
                self.budget, self.cfg.tau, self.example.to(device_of(self.model))
            )
        finally:
            sync_into(self.model, self.net)
            _restore(flags)
        self._start_recovery()
        self._partition()
        self.adversary.reset()
        self.epoch, self._explicit = 0, False
        self._freeze_edge_bn()
        return self.model

    # ------------------------------------------------------------- the result

    def partitions(self) -> tuple[BlockNet, BlockNet]:
        """The edge (everything up to the split) and the cloud (the rest, with your head).

        Both share the model's modules: ``cloud(edge(x))`` equals ``model(x)``.

        Example::

            edge, cloud = pruner.partitions()
            features = edge(x)          # what the device sends
        """
        return split_model(self.net, self.split)

    def edge_params(self) -> int:
        """Parameters of the edge now (masks not counted; they fold into their BNs).

        Example::

            print(f"edge: {pruner.edge_params():,} parameters")
        """
        return count_params(edge_modules(self.net, self.split))

    def projected_edge_params(self) -> int:
        """The edge's parameters if the masks at or below tau were removed now (before prune).

        Example::

            print(pruner.projected_edge_params(), "of budget", pruner.budget)
        """
        if self.structure is None:
            return self.edge_params()
        return self.structure.projected_params(self.cfg.tau)

    def agreement(self) -> float | None:
        """Share of the first images seen that the model classifies as it did unpruned.

        None for outputs that are not class scores, or fewer than 16 images.

        Example::

            print(f"agrees with the unpruned model on {pruner.agreement():.0%}")
        """
        return self.probe.agreement(self.model) if self.probe is not None else None

    def export(
        self,
        out_dir: Path | str,
        target: str = "onnx",
        precision: str = "fp32",
        force: bool = False,
        opset: int = 17,
    ) -> dict[str, Any]:
        """Export the edge and cloud partitions (checked against torch); returns the manifest.

        First warns (one line, :class:`~patrol_compress.errors.PatrolWarning`)
        when the model no longer predicts what it predicted unpruned on most of
        the images it was given: exact removal and parity do not notice a
        collapsed network.

        Example::

            manifest = pruner.export("out/onnx")      # out/onnx/edge.onnx, cloud.onnx
        """
        from patrol_compress.exporters import export_partitions

        line = self.probe.warning(self.model) if self.probe is not None else None
        if line is not None:
            warnings.warn(line, PatrolWarning, stacklevel=2)
        return export_partitions(
            self.net,
            self.split,
            out_dir,
            target,
            precision,
            input_shape=self.input_shape,
            opset=opset,
            force=force,
        )

    def summary(self) -> dict[str, Any]:
        """Mask sparsity per block, edge sizes now and projected, the budget, the last terms.

        Example::

            print(pruner.summary()["edge_params"])
        """
        return {
            "split": self.split,
            "budget": self.budget.as_dict() if self.budget is not None else None,
            "steps": self.steps,
            "mask_lr": self.mask_lr,
            "edge_params": self.edge_params(),
            "projected_edge_params": self.projected_edge_params(),
            "mask_sparsity": mask_summary(self.net, self.cfg.tau),
            "terms": dict(self.last_terms),
            "agreement": self.agreement(),
            "removal": self.removal.as_dict() if self.removal is not None else None,
        }

    def surrogate_psnr(self, batches: Iterable[Any]) -> float | None:
        """The surrogate's reconstruction PSNR (dB) on up to 4 of ``batches`` (None: no term).

        Example::

            print(pruner.surrogate_psnr(loader))
        """
        if self.surrogate is None:
            return None
        self.model.eval()
        self.net.eval()
        return surrogate_psnr(self.surrogate, self._edge, batches, device_of(self.model))

    # ------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the remaining steps depend on besides the weights, as tensors.

        The masks, FISTA's iterate, momentum and caps, the steering's plan, the
        surrogate and its Adam, and the step and epoch counters (the model's
        own ``state_dict`` holds the weights). :func:`~patrol_compress.train.loop.run_stage`
        checkpoints it with ``stateful={"pruner": pruner}``.

        Example::

            torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, path)
        """
        from patrol_compress.pruning.state import pruner_state

        return pruner_state(self)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` saved (onto a pruner built the same way).

        Example::

            pruner.load_state_dict(torch.load(path, weights_only=True)["pruner"])
        """
        from patrol_compress.pruning.state import load_pruner_state

        load_pruner_state(self, state)


def _distill_settings(config: DistillSettings | Mapping[str, Any] | None) -> DistillSettings:
    """The distillation loss's settings: defaults, a settings model, or a mapping of them."""
    if config is None:
        return DistillSettings()
    if isinstance(config, DistillSettings):
        return DistillSettings.model_validate(
            config.model_dump(include=set(DistillSettings.model_fields))
        )
    if not isinstance(config, Mapping):
        raise UsageError(
            f"config: expected a mapping of the distillation's settings, found "
            f"{type(config).__name__}"
        )
    try:
        return DistillSettings.model_validate(dict(config))
    except ValidationError as exc:
        raise RecipeError(f"config.{problems(exc)[0]}") from None


def perturbed_count(batch: int, fraction: float) -> int:
    """How many images of a batch :func:`fused_lipschitz` perturbs (its own rule, restated).

    Used to skip the other ranks' share of the perturbation noise; if the two
    ever disagreed, distributed runs would only draw different (still valid) noise.
    """
    return max(1, min(batch, round(fraction * batch)))


def _flags(*models: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for model in models for m in model.modules()]


def _restore(flags: list[tuple[nn.Module, bool]]) -> None:
    for m, was in flags:
        m.training = was


__all__ = ["PatrolPruner", "perturbed_count"]
