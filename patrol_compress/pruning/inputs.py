"""What :class:`~patrol_compress.PatrolPruner` is given, checked: one line per mistake.

The pruner has two front doors, the user's own loop and the recipe pipeline,
and one set of checks: the settings (:func:`settings_of`), how the network
divides into stages and where the edge ends (:func:`view_of`), and the edge
budget (:func:`budget_of`). :class:`Names` words each message the way the
caller spelt the input: ``split``/``config.mask_lr`` for the pruner's
arguments, ``patrol.split``/``patrol.mask_lr`` for a recipe's section.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from patrol_compress import distributed
from patrol_compress.config.base import problems
from patrol_compress.config.recipe import (
    BlocksConfig,
    BudgetConfig,
    PatrolConfig,
    PatrolSettings,
)
from patrol_compress.errors import BudgetError, ModelError, RecipeError, UsageError, first_line
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.factory import block_view
from patrol_compress.models.split import edge_modules
from patrol_compress.models.traced import TracedNet, check_traced, same_output, trace_stages
from patrol_compress.pruning.budget import EdgeBudget, resolve_budget
from patrol_compress.pruning.masks import ChannelMask

BlocksLike = BlocksConfig | Mapping[str, Any] | Sequence[str]
BudgetLike = int | float | BudgetConfig | EdgeBudget | Mapping[str, Any]

JOB_FIELDS = tuple(sorted(set(PatrolConfig.model_fields) - set(PatrolSettings.model_fields)))
"""A recipe section's fields that are the job's, not the method's."""


@dataclass(frozen=True)
class Names:
    """How messages name the inputs: the pruner's arguments, or a recipe section's fields."""

    section: str | None = None

    def arg(self, name: str) -> str:
        """An argument of the pruner (``split``, ``budget``) or the same field of the section."""
        return f"{self.section}.{name}" if self.section else name

    def field(self, name: str) -> str:
        """A method setting: ``config.<name>`` for the pruner, ``<section>.<name>`` for a recipe."""
        return f"{self.section}.{name}" if self.section else f"config.{name}"

    @property
    def rerun(self) -> str:
        return " and rerun with --force" if self.section else ""


def settings_of(config: PatrolSettings | Mapping[str, Any] | None) -> PatrolSettings:
    """The method's settings: defaults (plain pruning), a settings model, or a mapping of them."""
    if config is None:
        return PatrolSettings()
    if isinstance(config, PatrolConfig):
        return config.settings()
    if isinstance(config, PatrolSettings):
        return config
    if not isinstance(config, Mapping):
        raise UsageError(
            f"config: expected a mapping of PATROL's settings, found {type(config).__name__}"
        )
    given = sorted({"split", "budget"} & set(config))
    if given:
        raise UsageError(f"config: pass {' and '.join(given)} as PatrolPruner arguments instead")
    job = sorted(set(JOB_FIELDS) & set(config))
    if job:
        raise UsageError(
            f"config.{job[0]}: a recipe's job setting, not one of the method's: in your own loop "
            "you run the epochs, choose the learning rates and the recovery (the method's "
            f"settings are {', '.join(PatrolSettings.model_fields)})"
        )
    try:
        return PatrolSettings.model_validate(dict(config))
    except ValidationError as exc:
        raise RecipeError(f"config.{problems(exc)[0]}") from None


def blocks_of(blocks: BlocksLike) -> BlocksConfig | list[str]:
    """Groups of top-level children (a mapping), or the modules each stage ends with (paths)."""
    if isinstance(blocks, BlocksConfig):
        return blocks
    if isinstance(blocks, (list, tuple)) and all(isinstance(b, str) for b in blocks) and blocks:
        return list(blocks)
    if not isinstance(blocks, Mapping):
        raise ModelError(
            "blocks: expected {'stem': [children], 'stages': [[children], ...], 'head': "
            "[children]} or a list of the module paths each stage ends with, found "
            f"{type(blocks).__name__}"
        )
    try:
        return BlocksConfig.model_validate(dict(blocks))
    except ValidationError as exc:
        raise ModelError(
            f"blocks.{problems(exc)[0]} (expected {{'stem': [children], 'stages': "
            "[[children], ...], 'head': [children]}: the model's top-level children by name)"
        ) from None


def budget_config(budget: BudgetLike) -> tuple[BudgetConfig | EdgeBudget | float, str | None]:
    """The budget as a recipe's ``patrol.budget``, an already resolved one, or a share of the
    unpruned edge's parameters (a float in (0, 1)); and a ``fit_split`` given as a module
    path (a traced model's shallower cut)."""
    if isinstance(budget, bool):
        raise BudgetError(f"budget: expected parameters or a mapping, found {budget!r}")
    if isinstance(budget, (BudgetConfig, EdgeBudget)):
        return budget, None
    if isinstance(budget, float):
        if not 0.0 < budget < 1.0:
            raise BudgetError(
                f"budget: a float is a share of the edge's parameters, in (0, 1); found {budget}"
            )
        return budget, None
    if isinstance(budget, int):
        if budget < 1:
            raise BudgetError(f"budget: expected at least 1 parameter, found {budget}")
        return BudgetConfig(params=budget), None
    if not isinstance(budget, Mapping):
        raise BudgetError(
            f"budget: expected parameters (int) or a mapping such as {{'fit_split': 1}}, "
            f"found {type(budget).__name__}"
        )
    data = dict(budget)
    path = data.get("fit_split")
    if isinstance(path, str):
        data["fit_split"] = 1  # a placeholder; the traced view gives its index
    unknown = [k for k in data if k not in BudgetConfig.model_fields]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(BudgetConfig.model_fields), 1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise BudgetError(
            f"budget.{unknown[0]}: unknown key{hint}; the budget takes "
            f"{', '.join(BudgetConfig.model_fields)}"
        )
    try:
        return BudgetConfig.model_validate(data), path if isinstance(path, str) else None
    except ValidationError as exc:
        raise BudgetError(f"budget.{problems(exc)[0]}") from None


def check_model(model: object, example: object) -> tuple[nn.Module, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch nn.Module, found {type(model).__name__}")
    if any(isinstance(m, ChannelMask) for m in model.modules()):
        raise ModelError(
            "model: already has PATROL's masks (a PatrolPruner was built on it); build one "
            "pruner per model, or give a copy (copy.deepcopy) to another"
        )
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ModelError("example_inputs: expected one image batch tensor of shape (N, C, H, W)")
    return model, example.detach()


def view_of(
    model: nn.Module,
    blocks: BlocksLike | None,
    split: int | str,
    fit_path: str | None,
    example: torch.Tensor,
    names: Names,
) -> tuple[BlockNet, int]:
    """The ordered-blocks view of ``model`` and the index of the stage the edge ends with.

    A :class:`BlockNet` is its own view; ``blocks`` as a mapping groups the
    top-level children (the forward must run them in that order); module paths
    (as ``split``, in ``blocks`` or as the budget's ``fit_split``) cut the
    traced forward there (:mod:`patrol_compress.models.traced`).
    """
    if isinstance(split, bool) or not isinstance(split, (int, str)):
        raise ModelError(f"{names.arg('split')}: expected a stage index or name, found {split!r}")
    given = blocks_of(blocks) if blocks is not None else None
    eval_output(model, example)
    if isinstance(model, BlockNet) and given is None:
        return model, split_index(model, split, names)
    if isinstance(given, BlocksConfig):
        view = block_view(model, given)
        check_chain(model, view, example)
        return view, split_index(view, split, names)
    ends = list(given or [])
    for path in (split, fit_path):
        if isinstance(path, str) and path not in ends:
            ends.append(path)
    if not ends:
        children = [n for n, _ in model.named_children()]
        raise ModelError(
            f"blocks: needed for a {type(model).__name__} with a numbered split (only a "
            "BlockNet brings its own); name the split by its module path "
            f"({names.arg('split')}='{children[-2] if len(children) > 1 else 'features.6'}'), "
            f"or group its children {children} as {{'stem': [...], 'stages': [[...], ...], "
            "'head': [...]}"
        )
    traced = trace_stages(model, ends, example)
    check_traced(traced, model, example)
    return traced, split_index(traced, split, names)


def split_index(net: BlockNet, split: int | str, names: Names) -> int:
    """1-based index of the stage the edge ends with (a stage's index, name, or last child)."""
    stages = list(net.stage_names)
    if isinstance(split, int):
        if not 1 <= split <= len(stages):
            raise ModelError(
                f"{names.arg('split')}: {split} is beyond this model's depth "
                f"(stages 1..{len(stages)})"
            )
        return split
    if split in stages:
        return stages.index(split) + 1
    spec = dict(net.block_spec)
    for i, stage in enumerate(stages):
        if spec[stage][-1] == split:
            return i + 1
    valid = [*stages, *(spec[s][-1] for s in stages)]
    raise ModelError(
        f"{names.arg('split')} '{split}': not a stage or a stage's last child; one of {valid}"
    )


@torch.no_grad()
def check_chain(model: nn.Module, view: BlockNet, example: torch.Tensor) -> None:
    """The blocks' children run in order must be the model's own forward (eval mode)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        x = example[:1].to(device_of(model))
        own = model_output(model, x)
        if view is model:
            return
        order = [c for _, children in view.block_spec for c in children]
        try:
            chained = view(x)
        except Exception as exc:
            raise ModelError(
                f"running the children {order} in order fails ({first_line(exc)}); the "
                "forward must be its children in order: put functional steps (e.g. "
                "torch.flatten) in modules (nn.Flatten()) and list them in blocks, or leave "
                "blocks out and name the split by its module path (the forward is traced)"
            ) from None
        if not same_output(chained, own):
            raise ModelError(
                f"running the children {order} in order does not give the model's own "
                "output; the forward must be its children in order (functional steps "
                "such as torch.flatten as modules, no extra computation), or leave blocks out "
                "and name the split by its module path"
            )
    finally:
        for m, was in flags:
            m.training = was


@torch.no_grad()
def eval_output(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """:func:`model_output` of the first example in eval mode (every module's flag kept)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        return model_output(model, example[:1].to(device_of(model)))
    finally:
        for m, was in flags:
            m.training = was


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode output for ``x``: one tensor, or one ModelError line."""
    try:
        out = model(x)
    except Exception as exc:
        raise ModelError(
            f"the model does not take example_inputs of shape {list(x.shape)}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"the model returns {type(out).__name__} in eval mode; PATROL's removal "
            "check and the exporters need one tensor (logits or an embedding)"
        )
    return out


def check_distributed_budget(budget: BudgetConfig | EdgeBudget | float, names: Names) -> None:
    """Latency limits are measured on one machine: every rank would steer other masks."""
    if not distributed.current().active or isinstance(budget, float):
        return
    if isinstance(budget, EdgeBudget):
        timed = budget.latency is not None
    else:
        timed = budget.latency_ms is not None or (
            budget.fit_split is not None and "latency" in budget.fit
        )
    if timed:
        raise RecipeError(
            f"{names.arg('budget')}: latency limits are measured on one machine; run this on "
            "one process (macs is the deterministic stand-in for several)"
        )


def check_terms(settings: PatrolSettings, split: int, names: Names) -> None:
    """One Lipschitz weight per edge stage."""
    lip = settings.lipschitz
    if lip.enabled and len(lip.alphas) < split:
        raise RecipeError(
            f"{names.field('lipschitz.alphas')} needs one weight per edge stage ({split}), "
            f"found {len(lip.alphas)}"
        )


def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def edge_budget(
    cfg: BudgetConfig | EdgeBudget | float | None,
    fit_path: str | None,
    view: BlockNet,
    split: int,
    input_shape: tuple[int, int, int],
    names: Names,
    value_bits: int = 32,
) -> EdgeBudget | None:
    """The budget's limits as numbers (``fit_split`` measured on the unpruned view;
    ``value_bits``: bits per crossing value, ``uplink.bits`` or 32)."""
    if cfg is None:
        return None
    check_distributed_budget(cfg, names)
    if isinstance(cfg, EdgeBudget):
        return cfg
    if isinstance(cfg, float):
        cfg = BudgetConfig(params=max(1, int(cfg * count_params(edge_modules(view, split)))))
    if fit_path is not None:
        assert isinstance(view, TracedNet)
        cfg = cfg.model_copy(update={"fit_split": view.ends.index(fit_path) + 1})
    fit = cfg.fit_split
    if fit is not None and not 1 <= fit < split:
        raise ModelError(
            f"{names.arg('budget')}.fit_split ({fit_path or fit}) must be a split "
            f"shallower than {names.arg('split')} ({split})"
        )
    return resolve_budget(cfg, view, input_shape, split, value_bits)


def sync_into(model: nn.Module, view: BlockNet) -> None:
    """Modules the view replaced (a masked BN, a folded one) go into the model itself.

    A view shares the model's modules, but a module that is a direct child of
    one of the view's containers (a top-level child, or a leaf a traced piece
    calls) is replaced in that container only; the model's own forward must
    see the same object.
    """
    if view is model:
        return
    if isinstance(view, TracedNet):
        pairs = view.source_paths()
    else:
        pairs = [(name, name) for name, _ in view.named_children()]
    for view_path, own_path in pairs:
        new = view.get_submodule(view_path)
        if model.get_submodule(own_path) is not new:
            parent, _, child = own_path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def whole_steps(value: object, name: str) -> int | None:
    """``total_steps`` / ``replan_every``: None or a whole number of steps >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name}: expected a whole number of steps >= 1, found {value!r}")
    return value
