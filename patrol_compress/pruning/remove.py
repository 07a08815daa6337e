"""Physical removal of masked channels through torch-pruning's dependency graph.

The dependency graph couples channels that must go together (a residual stream
ties the downsample branch, every block's last conv/BN and the next layer's
input). :class:`MaskPruner` registers our :class:`ChannelMask` with the graph so
masks are pruned with their group, and :class:`MaskImportance` scores each
coupled channel by the *largest* |mask| over the group: a channel is removable
only if every mask on it is <= tau. A group with a writer that has no mask
(an unmasked conv or BN writing into it) scores ``inf``: removing its channels
would change the output, so it is never pruned (``docs/measurements.md``, "Masks
and channel removal": removing when *any* mask is zero changed outputs by 2e-2).

The removal order is: hard-zero masks <= tau, prune through the graph, fold the
(now pruned) masks into their BNs. In eval mode the result equals the
hard-zeroed masked model up to float rounding, which :func:`check_equivalence`
asserts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.head import ReidHead
from patrol_compress.pruning.masks import ChannelMask, MaskedNorm
from patrol_compress.uplink.quant import UplinkPruner, UplinkQuant

EQUIVALENCE_ATOL = 1e-5


class MaskPruner(tp.pruner.function.BasePruningFunc):
    """Prunes a ChannelMask's single weight vector on in- and out-channel calls, like a BN."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, ChannelMask)
        drop = set(int(i) for i in idxs)
        keep = [i for i in range(layer.weight.numel()) if i not in drop]
        w = layer.weight
        layer.weight = nn.Parameter(w.data[keep].clone(), requires_grad=w.requires_grad)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, ChannelMask)
        return int(layer.weight.numel())

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)


class MaskImportance(tp.importance.Importance):
    """Per root channel: max |mask| over the group's masks; ``inf`` if a writer is unmasked."""

    def __init__(self, masked_bns: set[int], graph: tp.DependencyGraph) -> None:
        self.masked_bns = masked_bns
        self.graph = graph

    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        n = len(group[0].idxs)
        score = torch.zeros(n)
        seen_mask = False
        for item in group:
            dep, idxs = item.dep, item.idxs
            layer = dep.target.module
            fn = dep.handler
            if isinstance(layer, ChannelMask):
                seen_mask = True
                vals = layer.weight.detach().abs()[list(idxs)].float().cpu()
                root = torch.as_tensor(item.root_idxs)
                score.scatter_reduce_(0, root, vals, reduce="amax")
            elif (
                isinstance(layer, nn.modules.batchnorm._BatchNorm)
                and id(layer) not in self.masked_bns
            ) or (
                self.graph.is_out_channel_pruning_fn(fn)
                and isinstance(layer, (nn.Conv2d, nn.Linear))
                and not self._feeds_masked_bn(layer)
            ):
                return torch.full((n,), float("inf"))
        if not seen_mask:
            return torch.full((n,), float("inf"))
        return score

    def _feeds_masked_bn(self, layer: nn.Module) -> bool:
        node = self.graph.module2node.get(layer)
        if node is None:
            return False
        return any(id(o.module) in self.masked_bns for o in node.outputs)


@dataclass
class MaskGroups:
    """The dependency graph of a masked model and its mask-carrying groups."""

    graph: tp.DependencyGraph
    groups: list[tp.dependency.Group]
    importance: MaskImportance

    def scores(self) -> list[torch.Tensor]:
        return [self.importance(g) for g in self.groups]


def build_mask_groups(model: BlockNet, example: torch.Tensor) -> MaskGroups:
    """Trace ``model`` (with masks inserted) and collect the groups that carry masks."""
    was = model.training
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example.to(next(model.parameters()).device),
                forward_fn=_trace_forward,
                customized_pruners={ChannelMask: MaskPruner(), UplinkQuant: UplinkPruner()},
            )
    finally:
        model.train(was)
    masked_bns = {id(m.bn) for m in model.modules() if isinstance(m, MaskedNorm)}
    imp = MaskImportance(masked_bns, graph)
    groups = []
    for g in graph.get_all_groups(root_module_types=(ChannelMask,)):
        if any(isinstance(dep.target.module, ChannelMask) for dep, _ in g):
            groups.append(g)
    return MaskGroups(graph, groups, imp)


def _trace_forward(model: BlockNet, x: torch.Tensor) -> object:
    """The training-time forward (logits and feature) with every layer in eval mode.

    torch-pruning traces in eval mode, where the re-id head returns only the
    embedding; the classifier must be in the graph too so its input channels
    are pruned with the last residual stream. Its output channels (the classes)
    never root a group, since groups are rooted at masks.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, ReidHead):
        return model(x)
    for name, children in model.block_spec:
        if name != "head":
            for c in children:
                x = getattr(model, c)(x)
    feat = torch.flatten(head.pool(x), 1)
    emb = head.neck(feat)
    return head.classifier(emb), emb


def removable(scores: torch.Tensor, tau: float) -> list[int]:
    """Channels with score <= tau, always keeping the strongest one of the group."""
    idx = torch.nonzero(scores <= tau).flatten().tolist()
    if len(idx) == len(scores):
        idx.remove(int(torch.argmax(scores)))
    return idx


def plan_by_threshold(mg: MaskGroups, tau: float) -> list[list[int]]:
    return [removable(s, tau) for s in mg.scores()]


@torch.no_grad()
def zero_planned(mg: MaskGroups, plan: list[list[int]]) -> None:
    """Set the masks of every planned channel to exactly 0 (before removal)."""
    for group, idxs in zip(mg.groups, plan, strict=True):
        chosen = set(idxs)
        if not chosen:
            continue
        for item in group:
            layer = item.dep.target.module
            if isinstance(layer, ChannelMask):
                local = [item.idxs[j] for j, r in enumerate(item.root_idxs) if r in chosen]
                layer.weight[local] = 0.0


@torch.no_grad()
def apply_plan(mg: MaskGroups, plan: list[list[int]]) -> int:
    """Zero the planned channels' masks exactly, then prune them; returns channels removed."""
    zero_planned(mg, plan)
    removed = 0
    for group, idxs in zip(mg.groups, plan, strict=True):
        if not idxs:
            continue
        root_dep = group[0].dep
        sub = mg.graph.get_pruning_group(root_dep.target.module, root_dep.handler, idxs)
        if not mg.graph.check_pruning_group(sub):
            raise ModelError("torch-pruning refused a planned removal (it would empty a layer)")
        sub.prune()
        removed += len(idxs)
    return removed


def restore_frozen(model: nn.Module) -> None:
    """torch-pruning recreates parameters; keep the BN-neck's bias frozen as built."""
    head = getattr(model, "head", None)
    neck = getattr(head, "neck", None) if head is not None else None
    if isinstance(neck, nn.BatchNorm1d) and neck.bias is not None:
        neck.bias.requires_grad_(False)
    if isinstance(neck, MaskedNorm):
        neck.bn.bias.requires_grad_(False)


@torch.no_grad()
def check_equivalence(
    reference: nn.Module, pruned: nn.Module, example: torch.Tensor, atol: float = EQUIVALENCE_ATOL
) -> float:
    """Max |difference| of eval outputs relative to their scale; raises above ``atol``.

    Computed in float64, so re-ordered float32 sums add no noise. What remains is
    the float32 rounding of folding each mask into its BN (``fl(m * gamma)``, one
    ulp per channel), which grows with the output's magnitude; the difference is
    therefore divided by ``max(1, max |output|)``: for outputs of order one (the
    case measured in ``docs/measurements.md``) this is the plain max abs diff,
    for a re-id embedding of norm ~100 it does not punish rounding. Removing a
    channel that was not exactly zero changes outputs at the 1e-2 level and
    fails either way.
    """
    from patrol_compress.uplink.quant import silence_noise

    # A noisy uplink's draw differs between two calls; the function is compared without it.
    ref = silence_noise(copy.deepcopy(reference)).eval().double()
    pr = silence_noise(copy.deepcopy(pruned)).eval().double()
    x = example.double().to(next(ref.parameters()).device)
    a, b = ref(x), pr(x)
    if a.shape != b.shape:
        # At the last split the embedding itself loses the removed channels, which
        # are exactly zero in the masked model: compare the non-zero columns.
        a, b = _nonzero_columns(a), _nonzero_columns(b)
        if a.shape != b.shape:
            raise ModelError(
                f"pruned output has {b.shape[1]} live channels, the masked model {a.shape[1]}"
            )
    if not a.numel():
        return 0.0
    diff = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
    if diff > atol:
        raise ModelError(
            f"pruned model differs from the masked model by {diff:.3g} relative to its "
            f"output scale (> {atol:g}); "
            "refusing to save a network that does not compute what was trained"
        )
    return diff


def _nonzero_columns(t: torch.Tensor) -> torch.Tensor:
    flat = t.flatten(2) if t.dim() > 2 else t.unsqueeze(-1)
    live = flat.abs().amax(dim=(0, 2)) > 0
    return t[:, live]
