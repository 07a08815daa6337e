"""Edge budgets: what the edge partition may weigh, and removal plans that meet it.

The budget is stated in the recipe as the unpruned size of a shallower split
(``fit_split``), as bytes (fp32 weights, 4 bytes per parameter) or as a
parameter count. Parameters count trainable weights and BN affine terms, as the
exported graph carries them; masks are folded away and do not count.

:func:`estimate_params` predicts the edge's size after a plan *without* pruning
anything, from the dependency groups (which layer loses which in/out channels);
tests check it against real removal. :func:`plan_for_budget` finds the smallest
global threshold on the channel scores whose removal fits the budget (scores are
max |mask| per coupled channel; a tiny weight-magnitude term breaks ties, so a
budget can be met even before masks differ).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.errors import BudgetError
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.masks import ChannelMask
from patrol_compress.pruning.remove import MaskGroups, removable
from patrol_compress.recipe import BudgetConfig

BYTES_PER_PARAM = 4
TIE_BREAK = 1e-4


def budget_params(cfg: BudgetConfig, unpruned: BlockNet) -> int:
    """The budget in parameters; ``fit_split`` is measured on the unpruned model."""
    if cfg.params is not None:
        return cfg.params
    if cfg.bytes is not None:
        return cfg.bytes // BYTES_PER_PARAM
    assert cfg.fit_split is not None
    return count_params(edge_modules(unpruned, cfg.fit_split))


def estimate_params(model: BlockNet, split: int, mg: MaskGroups, plan: list[list[int]]) -> int:
    """Edge parameters after removing ``plan`` (root channel indices per group)."""
    out_drop: dict[int, set[int]] = defaultdict(set)
    in_drop: dict[int, set[int]] = defaultdict(set)
    for group, idxs in zip(mg.groups, plan, strict=True):
        if not idxs:
            chosen: set[int] = set()
        else:
            chosen = set(idxs)
        if not chosen:
            continue
        for item in group:
            dep, g_idxs = item.dep, item.idxs
            root = item.root_idxs
            local = {g_idxs[j] for j, r in enumerate(root) if r in chosen}
            layer = dep.target.module
            if mg.graph.is_out_channel_pruning_fn(dep.handler):
                out_drop[id(layer)] |= local
            else:
                in_drop[id(layer)] |= local
    total = 0
    for top in edge_modules(model, split):
        for m in top.modules():
            total += _layer_params(m, out_drop.get(id(m), set()), in_drop.get(id(m), set()))
    return total


def _layer_params(m: nn.Module, out_d: set[int], in_d: set[int]) -> int:
    if isinstance(m, nn.Conv2d):
        out_c = m.out_channels - len(out_d)
        in_c = m.in_channels - len(in_d)
        kk = m.kernel_size[0] * m.kernel_size[1]
        if m.groups > 1 and m.groups == m.in_channels:
            n = out_c * kk
        else:
            n = out_c * (in_c // m.groups) * kk
        return n + (out_c if m.bias is not None else 0)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        n = m.num_features - len(out_d | in_d)
        return 2 * n if m.affine else 0
    if isinstance(m, nn.Linear):
        out_f, in_f = m.out_features - len(out_d), m.in_features - len(in_d)
        return out_f * in_f + (out_f if m.bias is not None else 0)
    if isinstance(m, ChannelMask):
        return 0
    return sum(p.numel() for p in m.parameters(recurse=False))


def ranking_scores(mg: MaskGroups) -> list[torch.Tensor]:
    """Mask scores with a small weight-magnitude tie-break (finite groups only)."""
    mag = tp.importance.GroupMagnitudeImportance(p=2, normalizer="max")
    out = []
    for g, s in zip(mg.groups, mg.scores(), strict=True):
        if torch.isinf(s).any():
            out.append(s)
            continue
        tie = mag(g)
        tie = tie / tie.max().clamp_min(1e-12) if tie is not None else torch.zeros_like(s)
        out.append(s + TIE_BREAK * tie.cpu().float())
    return out


def narrowest_params(model: BlockNet, split: int, mg: MaskGroups) -> int:
    """Edge size when every prunable group keeps one channel: the smallest legal edge."""
    scores = mg.scores()
    plan = [removable(torch.zeros_like(s), 0.0) if not torch.isinf(s).any() else [] for s in scores]
    return estimate_params(model, split, mg, plan)


def check_feasible(model: BlockNet, split: int, mg: MaskGroups, budget: int) -> int:
    low = narrowest_params(model, split, mg)
    if low > budget:
        raise BudgetError(
            f"patrol.budget: {budget} parameters cannot be met at split {split}; the narrowest "
            f"legal edge (one channel per prunable group) has {low}"
        )
    return low


def plan_for_budget(
    model: BlockNet, split: int, mg: MaskGroups, budget: int, tau: float
) -> tuple[list[list[int]], int]:
    """Smallest removal (threshold >= tau on ranking scores) whose edge fits ``budget``."""
    scores = ranking_scores(mg)
    base = [removable(s, tau) for s in scores]
    est = estimate_params(model, split, mg, base)
    if est <= budget:
        return base, est
    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    cands = torch.unique(finite[finite > tau]).sort().values
    lo, hi = 0, len(cands) - 1
    best: tuple[list[list[int]], int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        t = float(cands[mid])
        plan = [removable(s, t) for s in scores]
        est = estimate_params(model, split, mg, plan)
        if est <= budget:
            best, hi = (plan, est), mid - 1
        else:
            lo = mid + 1
    if best is None:
        raise BudgetError(f"no removal of the edge at split {split} fits {budget} parameters")
    return best


@dataclass(frozen=True)
class LatencyLimit:
    """A latency bound for the edge, measured on this machine while planning.

    ``runtime`` (onnxruntime or openvino), ``threads`` and ``batch`` say how the
    candidate edge is run; ``ms`` bounds the median latency of one call.
    """

    ms: float
    runtime: str = "onnxruntime"
    threads: int = 1
    batch: int = 1


@dataclass(frozen=True)
class EdgeBudget:
    """Every limit the edge must meet after removal; each one given must hold.

    ``params``: weights the edge carries (``fit_split`` and ``bytes`` resolve to
    it); ``macs``: multiply-accumulates per image; ``latency``: a measured bound.
    """

    params: int | None = None
    macs: int | None = None
    latency: LatencyLimit | None = None
