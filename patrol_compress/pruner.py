"""PATROL for your own model and training loop, in the spirit of torch-pruning's ``MetaPruner``.

Your network keeps its weights, its head and its forward; the pruner inserts
the soft masks into it, gives you the privacy terms to add to your task loss,
steps the masks with FISTA (and steers them into the edge budget), and removes
the masked channels through torch-pruning's dependency graph, checking that the
pruned network computes what the masked one did::

    pruner = PatrolPruner(
        model,                       # your nn.Module, trained weights kept
        example_inputs=torch.rand(2, 3, 32, 32),
        split="layer2",              # the edge ends after this block (or its index)
        budget=20_000,               # edge parameters (or {"fit_split": 1} / {"bytes": N})
        blocks={"stem": ["stem"], "stages": [["layer1"], ["layer2"], ["layer3"]],
                "head": ["pool", "flatten", "fc"]},
        total_steps=epochs * len(loader),
    )
    opt = torch.optim.Adam(pruner.weights(), lr=1e-3)   # the masks are FISTA's, not Adam's
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + pruner.privacy_loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()            # FISTA on the masks, budget steering
    model = pruner.prune()           # the same object, channels removed
    edge, cloud = pruner.partitions()
    pruner.export("out/onnx")        # edge.onnx + cloud.onnx, parity-checked

The pieces are the recipe path's own: the masks and their placement
(:mod:`~patrol_compress.pruning.masks`), the two granularities and the removal
with its exactness check (:mod:`~patrol_compress.pruning.structure`,
:mod:`~patrol_compress.pruning.remove`), budgets
(:mod:`~patrol_compress.pruning.budget`), FISTA with the budget steering
(:class:`~patrol_compress.pruning.patrol.MaskSteering`), the fused Lipschitz pass
(:mod:`~patrol_compress.regularizers`), the surrogate inverter
(:func:`~patrol_compress.pruning.patrol.build_surrogate`) and the edge at split K
(:mod:`~patrol_compress.models.split`). Settings are a
:class:`~patrol_compress.recipe.PatrolConfig` (a recipe's ``patrol:`` section)
without ``split``/``budget``, which are arguments here.

What the model must be: its forward runs its top-level children in order
(``blocks`` names them; put functional steps such as ``torch.flatten`` in
modules, e.g. ``nn.Flatten()``), returns one tensor in eval mode, and has
BatchNorms on the edge (the masks sit after them). Anything else is one
:class:`~patrol_compress.errors.ModelError` line naming what is missing.

As in the recipe path, the edge's BatchNorms normalise with their running
statistics from the pruner's creation on, also in your forward and whatever
``model.train()`` says (their scale and shift still train);
:meth:`PatrolPruner.close` ends that once you are done (after the recovery
fine-tune). One difference, because the loop is yours: the surrogate attacker
takes one Adam step on every batch's detached edge features inside
:meth:`PatrolPruner.privacy_loss` (the recipe path refits it every few epochs
on its own loader).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from patrol_compress.errors import BudgetError, ModelError, RecipeError, TrainingError, UsageError
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.factory import block_view
from patrol_compress.models.inversion import InversionNet, reconstruction_l2
from patrol_compress.models.split import StageBlock, check_split, edge_modules, edge_stage_blocks
from patrol_compress.models.split import split as split_model
from patrol_compress.pruning.budget import EdgeBudget, resolve_budget
from patrol_compress.pruning.masks import mask_parameters, mask_summary
from patrol_compress.pruning.patrol import MaskSteering, PatrolParts, build_surrogate
from patrol_compress.pruning.structure import (
    BlockStructure,
    ChannelStructure,
    Removal,
    make_structure,
)
from patrol_compress.recipe import BlocksConfig, BudgetConfig, PatrolConfig
from patrol_compress.regularizers import fused_lipschitz

BlocksLike = BlocksConfig | Mapping[str, Any]
BudgetLike = int | BudgetConfig | Mapping[str, Any]


def _blocks(blocks: BlocksLike) -> BlocksConfig:
    if isinstance(blocks, BlocksConfig):
        return blocks
    try:
        return BlocksConfig.model_validate(dict(blocks))
    except (ValidationError, TypeError, ValueError) as exc:
        raise ModelError(
            f"blocks: expected {{'stem': [children], 'stages': [[children], ...], "
            f"'head': [children]}}, found {str(blocks)[:80]} ({str(exc).splitlines()[0]})"
        ) from None


def _config(config: PatrolConfig | Mapping[str, Any] | None) -> PatrolConfig:
    if config is None:
        return PatrolConfig()
    if isinstance(config, PatrolConfig):
        return config
    if not isinstance(config, Mapping):
        raise RecipeError(
            "config: expected a recipe's patrol: section as a mapping (or a PatrolConfig), "
            f"found {type(config).__name__}"
        )
    given = sorted({"split", "budget"} & set(config))
    if given:
        raise UsageError(f"config: pass {' and '.join(given)} as PatrolPruner arguments instead")
    try:
        return PatrolConfig.model_validate(dict(config))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"config.{where}: {first['msg']}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _steps(value: object, name: str) -> int | None:
    """``total_steps`` / ``replan_every``: None or a whole number >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name}: expected a whole number of steps >= 1, found {value!r}")
    return value


class PatrolPruner:
    """PATROL on a user's ``nn.Module`` inside the user's own training loop.

    Args:
        model: the network; pruned in place (its trained weights are the start).
            A :class:`BlockNet` brings its own blocks; any other module needs ``blocks``.
        example_inputs: a batch the model takes (traced by torch-pruning, used
            for the exactness check and as the export's input shape).
        split: where the edge ends: a stage's index (1 = after the first stage),
            a stage block's name, or the name of a stage's last child.
        budget: the edge's limits after pruning: parameters (int), or a
            mapping with ``fit_split: K`` / ``params: N`` / ``bytes: N`` and/or
            ``macs: N`` and ``latency_ms: X`` (a recipe's ``patrol.budget``;
            ``fit_split``: the unpruned edge at a shallower split). All limits
            given must hold. None: masks at zero are removed, no size is enforced.
        blocks: the model's top-level children grouped as
            ``{"stem": [...], "stages": [[...], ...], "head": [...]}`` (a recipe's
            ``model.blocks``); each stage is a place the split may fall.
        total_steps: how many times you will call :meth:`step` before
            :meth:`prune`; the budget steering silences the planned channels by
            ``config.steer_until`` of them. Required with a budget.
        replan_every: steps between re-rankings of the planned channels (the
            recipe path re-ranks every epoch); default a tenth of ``total_steps``.
        config: PATROL's settings (a recipe's ``patrol:`` section without
            ``split``/``budget``): mask_lr, lambda1/2, tau, mask_init,
            granularity, steer_until, ``lipschitz`` and ``adversarial``.

    Example::

        pruner = PatrolPruner(net, torch.rand(2, 3, 32, 32), split=2, budget=20_000,
                              blocks={"stem": ["stem"], "stages": [["l1"], ["l2"], ["l3"]],
                                      "head": ["pool", "flat", "fc"]},
                              total_steps=300)
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
        config: PatrolConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model: expected a torch nn.Module, found {type(model).__name__}")
        if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
            raise ModelError(
                "example_inputs: expected one image batch tensor of shape (N, C, H, W)"
            )
        self.cfg = _config(config)
        self.model = model
        self.example = example_inputs.detach()
        c, h, w = (int(d) for d in self.example.shape[1:])
        self.input_shape = (c, h, w)
        self.net = self._view(model, blocks)
        self._check_chain()
        self.split = self._split_index(split)
        if self.cfg.lipschitz.enabled and len(self.cfg.lipschitz.alphas) < self.split:
            raise RecipeError(
                f"config.lipschitz.alphas needs one weight per edge stage ({self.split}), "
                f"found {len(self.cfg.lipschitz.alphas)}"
            )
        if self.cfg.adversarial.enabled and self.cfg.adversarial.surrogate != "mirror":
            raise RecipeError(
                "config.adversarial.surrogate: the plugin trains the 'mirror' surrogate only "
                "(the 'suite' one needs the recipe's data and attack settings; use "
                "`patrol-compress prune` for it)"
            )
        self.budget = self._budget(budget)
        total_steps = _steps(total_steps, "total_steps")
        replan_every = _steps(replan_every, "replan_every")
        if self.budget is not None and total_steps is None:
            raise UsageError(
                "total_steps: needed with a budget (the steering silences the planned "
                "channels over the steps you will take); pass epochs x batches per epoch"
            )
        self.total_steps = total_steps or 1
        self.replan_every = max(1, replan_every or self.total_steps // 10 or 1)
        self.structure = self._insert_masks()
        self._sync()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.removal: Removal | None = None
        self.surrogate: InversionNet | None = None
        self._s_opt: torch.optim.Optimizer | None = None
        self.last_terms: dict[str, float] = {}
        self._rebuild_privacy()
        self.steering: MaskSteering | None = MaskSteering(
            PatrolParts(self.net, self.structure, self.surrogate),
            self.cfg,
            self.budget,
            self.total_steps,
        )
        self.steps = 0
        self._prepare_step()

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _view(model: nn.Module, blocks: BlocksLike | None) -> BlockNet:
        if isinstance(model, BlockNet) and blocks is None:
            return model
        if blocks is None:
            children = [n for n, _ in model.named_children()]
            raise ModelError(
                f"blocks: needed for a {type(model).__name__} (only a BlockNet brings its own); "
                f"group its children {children} as {{'stem': [...], 'stages': [[...], ...], "
                "'head': [...]}"
            )
        return block_view(model, _blocks(blocks))

    @torch.no_grad()
    def _check_chain(self) -> None:
        """The blocks' children run in order must be the model's own forward (eval mode)."""
        flags = _flags(self.model)
        try:
            self.model.eval()
            x = self.example[:1].to(_device(self.model))
            try:
                own = self.model(x)
            except Exception as exc:
                raise ModelError(
                    f"the model does not take example_inputs of shape {list(x.shape)}: "
                    f"{_one_line(exc)}"
                ) from None
            if not isinstance(own, torch.Tensor):
                raise ModelError(
                    f"the model returns {type(own).__name__} in eval mode; PATROL's removal "
                    "check and the exporters need one tensor (logits or an embedding)"
                )
            if self.net is self.model:
                return
            order = [c for _, children in self.net.block_spec for c in children]
            try:
                chained = self.net(x)
            except Exception as exc:
                raise ModelError(
                    f"running the children {order} in order fails ({_one_line(exc)}); the "
                    "forward must be its children in order: put functional steps (e.g. "
                    "torch.flatten) in modules (nn.Flatten()) and list them in blocks"
                ) from None
            same = (
                isinstance(chained, torch.Tensor)
                and chained.shape == own.shape
                and torch.allclose(chained, own, rtol=1e-4, atol=1e-5)
            )
            if not same:
                raise ModelError(
                    f"running the children {order} in order does not give the model's own "
                    "output; the forward must be its children in order (functional steps "
                    "such as torch.flatten as modules, no extra computation)"
                )
        finally:
            _restore(flags)

    def _split_index(self, split: int | str) -> int:
        stages = list(self.net.stage_names)
        if isinstance(split, bool) or not isinstance(split, (int, str)):
            raise ModelError(f"split: expected a stage index or name, found {split!r}")
        if isinstance(split, int):
            check_split(self.net, split)
            return split
        if split in stages:
            return stages.index(split) + 1
        spec = dict(self.net.block_spec)
        for i, stage in enumerate(stages):
            if spec[stage][-1] == split:
                return i + 1
        valid = [*stages, *(spec[s][-1] for s in stages)]
        raise ModelError(f"split '{split}': not a stage or a stage's last child; one of {valid}")

    def _budget(self, budget: BudgetLike | None) -> EdgeBudget | None:
        if budget is None:
            return None
        if isinstance(budget, bool):
            raise BudgetError(f"budget: expected parameters or a mapping, found {budget!r}")
        if isinstance(budget, int):
            cfg = BudgetConfig(params=budget) if budget >= 1 else None
            if cfg is None:
                raise BudgetError(f"budget: expected at least 1 parameter, found {budget}")
        elif isinstance(budget, BudgetConfig):
            cfg = budget
        elif not isinstance(budget, Mapping):
            raise BudgetError(
                "budget: expected a whole number of edge parameters, a mapping such as "
                f"{{'fit_split': 1}} or a BudgetConfig, found {budget!r}"[:200]
            )
        else:
            try:
                cfg = BudgetConfig.model_validate(dict(budget))
            except ValidationError as exc:
                raise BudgetError(f"budget: {exc.errors()[0]['msg']}") from None
        if cfg.fit_split is not None:
            check_split(self.net, cfg.fit_split)
            if cfg.fit_split >= self.split:
                raise BudgetError(
                    f"budget.fit_split ({cfg.fit_split}) must be shallower than the split "
                    f"({self.split})"
                )
        return resolve_budget(cfg, self.net, self.input_shape)

    def _insert_masks(self) -> ChannelStructure | BlockStructure:
        flags = _flags(self.model)
        try:
            structure = make_structure(
                self.cfg.granularity,
                self.net,
                self.split,
                self.cfg.mask_init,
                self.example.to(_device(self.model)),
                self.cfg.round_to,
                self.cfg.rank,
            )
        except ModelError:
            raise
        except Exception as exc:  # torch-pruning's tracer raises many kinds
            raise ModelError(f"torch-pruning cannot trace the model: {_one_line(exc)}") from None
        finally:
            _restore(flags)
        if self.budget is not None:
            structure.check(self.budget)
        return structure

    def _sync(self) -> None:
        """Top-level children the view replaced (a masked BN, a dropped branch) go into model."""
        if self.net is self.model:
            return
        for name, child in self.net.named_children():
            if getattr(self.model, name) is not child:
                setattr(self.model, name, child)

    def _rebuild_privacy(self) -> None:
        self._edge: list[StageBlock] = edge_stage_blocks(self.net, self.split)
        self._freeze_edge_bn()
        self.surrogate, self._s_opt = None, None
        adv = self.cfg.adversarial
        if adv.enabled:
            dev = _device(self.model)
            self.surrogate = build_surrogate(
                self.net, self.split, self.input_shape, adv.adversary_width
            ).to(dev)
            self._s_opt = torch.optim.Adam(self.surrogate.parameters(), lr=adv.adversary_lr)

    def _freeze_edge_bn(self) -> None:
        """The edge's BatchNorms run on their running statistics, whatever mode is set.

        As in the recipe path's PATROL and recovery stages: the Lipschitz pass
        must not mix clean and perturbed images in batch statistics, and the
        task loss must see the same (eval-mode) edge the privacy terms shape,
        or the edge learns to satisfy the privacy terms only in eval mode.
        A pre-forward hook on each BN survives your ``model.train()``;
        :meth:`close` removes them.
        """
        self.close()
        for block in self._edge:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    self._hooks.append(m.register_forward_pre_hook(_running_stats))

    def close(self) -> None:
        """Give the edge's BatchNorms back their train/eval behaviour (after recovery).

        Example::

            model = pruner.prune(); ...recovery...; pruner.close()
        """
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # --------------------------------------------------------------- training

    def weights(self) -> Iterator[nn.Parameter]:
        """The model's trainable parameters without the masks: give these to your optimizer.

        Example::

            opt = torch.optim.Adam(pruner.weights(), lr=1e-3)
        """
        masks = {id(p) for p in mask_parameters(self.net)}
        return (p for p in self.model.parameters() if id(p) not in masks and p.requires_grad)

    def privacy_loss(self, x: torch.Tensor) -> torch.Tensor:
        """PATROL's privacy terms for the batch ``x``: add them to your task loss.

        ``L_lip - beta * L_adv`` (Eq. 4-9): the Lipschitz term of the edge's
        stages (``config.lipschitz``) minus ``beta`` times the reconstruction
        error of the surrogate attacker (``config.adversarial``), which first
        takes one step on this batch's detached edge features. The terms' values are in
        :attr:`last_terms`. Zero when both are disabled.

        Example::

            loss = F.cross_entropy(model(x), y) + pruner.privacy_loss(x)
        """
        lip_cfg, adv_cfg = self.cfg.lipschitz, self.cfg.adversarial
        terms: dict[str, float] = {}
        if lip_cfg.enabled:
            alphas = lip_cfg.alphas[: self.split]
            z, lip, ks = fused_lipschitz(
                self._edge, x, alphas, lip_cfg.sigma, lip_cfg.sample_fraction
            )
            terms.update({f"k{j + 1}": k for j, k in enumerate(ks)})
        else:
            z = x
            for block in self._edge:
                z = block(z)
            lip = x.new_zeros(())
        total = lip
        terms["lip"] = float(lip.detach())
        if self.surrogate is not None and self._s_opt is not None:
            self.surrogate.requires_grad_(True).train()
            fit = reconstruction_l2(x, self.surrogate(z.detach()))
            self._s_opt.zero_grad(set_to_none=True)
            fit.backward()
            self._s_opt.step()
            self.surrogate.requires_grad_(False).eval()
            adv = reconstruction_l2(x, self.surrogate(z))
            total = total - adv_cfg.beta * adv
            terms["adv"] = float(adv.detach())
        self.last_terms = terms
        return total

    def _prepare_step(self) -> None:
        if self.steering is None:
            return
        if self.steps % self.replan_every == 0:
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
        self.steering.fista.step()
        self.steering.fista.zero_grad(set_to_none=True)
        self.steps += 1
        self._prepare_step()

    # ---------------------------------------------------------------- removal

    def prune(self) -> nn.Module:
        """Remove the masked channels (and fold the masks); returns the model, pruned in place.

        Masks at or below ``config.tau`` go; with a budget, the lowest-ranked
        channels go until the edge fits. torch-pruning removes them with their
        coupled layers, and the result must compute what the masked model did
        (eval mode, relative difference <= 1e-5) or nothing is kept. Make a new
        optimizer afterwards: the pruned layers have new parameters.

        Example::

            model = pruner.prune()
            print(pruner.edge_params(), pruner.removal.as_dict())
        """
        if self.removal is not None:
            return self.model
        steering = self.steering
        if steering is not None:
            steering.finish(self.steps > 0)
        dead = [b for b, s in mask_summary(self.net, self.cfg.tau).items() if s["sparsity"] >= 1.0]
        if dead:
            raise TrainingError(
                f"every mask of {', '.join(dead)} is <= tau, so nothing would pass; lower "
                "config mask_lr or lambda1/lambda2 (each step shrinks a mask by about "
                "mask_lr x (lambda1 + lambda2 x mask))"
            )
        flags = _flags(self.model)
        self.model.eval()
        try:
            self.removal = self.structure.remove(
                self.budget, self.cfg.tau, self.example.to(_device(self.model))
            )
        finally:
            self._sync()
            _restore(flags)
        self.steering = None
        self._rebuild_privacy()
        return self.model

    # ------------------------------------------------------------- the result

    def partitions(self) -> tuple[BlockNet, BlockNet]:
        """The edge (stem + stages up to the split) and the cloud (the rest with your head).

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
        if self.removal is not None:
            return self.edge_params()
        return self.structure.projected_params(self.cfg.tau)

    def export(
        self,
        out_dir: Path | str,
        target: str = "onnx",
        precision: str = "fp32",
        force: bool = False,
        opset: int = 17,
    ) -> dict[str, Any]:
        """Export the edge and cloud partitions (checked against torch); returns the manifest.

        Example::

            manifest = pruner.export("out/onnx")      # out/onnx/edge.onnx, cloud.onnx
        """
        from patrol_compress.exporters import export_partitions

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
            "edge_params": self.edge_params(),
            "projected_edge_params": self.projected_edge_params(),
            "mask_sparsity": mask_summary(self.net, self.cfg.tau),
            "terms": dict(self.last_terms),
            "removal": self.removal.as_dict() if self.removal is not None else None,
        }


def _running_stats(module: nn.Module, args: object) -> None:
    """Forward pre-hook: this BatchNorm normalises with its running statistics."""
    module.training = False


def _flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore(flags: list[tuple[nn.Module, bool]]) -> None:
    for m, was in flags:
        m.training = was


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


__all__ = ["PatrolPruner"]
