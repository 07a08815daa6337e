"""Masks, removal through torch-pruning, budgets, FISTA, save/reload of pruned models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from patrol_compress.errors import BudgetError
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models import BlockNet, build_model, split
from patrol_compress.models.saved import load_run_model, save_run_model
from patrol_compress.models.split import edge_modules
from patrol_compress.pruning.budget import EdgeBudget, estimate_cost, estimate_params, layer_spatial
from patrol_compress.pruning.fista import FISTA
from patrol_compress.pruning.masks import MaskedNorm, fold_masks, insert_channel_masks, iter_masks
from patrol_compress.pruning.remove import (
    EQUIVALENCE_ATOL,
    _nonzero_columns,
    apply_plan,
    build_mask_groups,
    plan_by_threshold,
)
from patrol_compress.pruning.structure import BlockStructure, ChannelStructure
from patrol_compress.recipe import ModelConfig
from patrol_compress.testing.tiny import randomize_bn

from .helpers import tiny_mobilenet_net, tiny_model_info

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def tiny(split_head: bool = True) -> BlockNet:
    m = build_model(ModelConfig(width=0.125, stem="small"), 10).eval()
    randomize_bn(m)
    return m


def hand_masks(model: nn.Module, seed: int = 1) -> None:
    """Masks in {0, 0.5, 1}: a third of the entries exactly zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_masks(model):
            m.weight.copy_(torch.randint(0, 3, m.weight.shape, generator=g).float() / 2)


def test_masks_after_every_edge_bn_and_the_neck_at_last_split() -> None:
    m = tiny()
    names = insert_channel_masks(m, 4)
    n_bn = sum(
        isinstance(x, nn.BatchNorm2d)
        for x in build_model(ModelConfig(width=0.125, stem="small"), 10).modules()
    )
    assert len(names) == n_bn + 1 and names[-1] == "head.neck"
    m2 = tiny()
    assert "head.neck" not in insert_channel_masks(m2, 2)
    assert not isinstance(m2.layer3[0].bn1, MaskedNorm)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_pruning_zero_masks_is_exact(k: int) -> None:
    model = tiny()
    insert_channel_masks(model, k)
    hand_masks(model)
    reference = copy.deepcopy(model).eval()
    mg = build_mask_groups(model, X)
    plan = plan_by_threshold(mg, 0.0)
    predicted = estimate_params(model, k, mg, plan)
    spatial = layer_spatial(edge_modules(model, k), X)
    predicted_macs = estimate_cost(model, k, mg, plan, spatial).macs
    assert apply_plan(mg, plan) > 0
    fold_masks(model)
    assert not any(isinstance(x, MaskedNorm) for x in model.modules())
    model.eval()
    # Prediction of the size matches the real removal.
    assert count_params(edge_modules(model, k)) == predicted
    assert count_macs(nn.Sequential(*edge_modules(model, k)), (3, 32, 32)) == predicted_macs
    a, b = reference(X), model(X)
    if k < 4:
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=EQUIVALENCE_ATOL)
    # Edge features equal too (where shapes agree: removed channels are exactly 0).
    ea, _ = split(reference, k)
    eb, _ = split(model, k)
    fa, fb = _nonzero_columns(ea(X)), _nonzero_columns(eb(X))
    assert torch.allclose(fa, fb, atol=EQUIVALENCE_ATOL)


def test_pruned_shapes_are_smaller() -> None:
    model = tiny()
    insert_channel_masks(model, 4)
    with torch.no_grad():
        model.layer1[0].bn1.mask.weight[:3] = 0  # inner channels of one block
    mg = build_mask_groups(model, X)
    apply_plan(mg, plan_by_threshold(mg, 0.0))
    fold_masks(model)
    assert model.layer1[0].conv1.weight.shape[0] == 8 - 3
    assert model.layer1[0].conv2.weight.shape[1] == 8 - 3


def test_residual_channel_needs_every_mask_zero() -> None:
    model = tiny()
    insert_channel_masks(model, 4)
    with torch.no_grad():
        model.layer1[0].bn2.mask.weight[0] = 0  # only one of the stream's masks
    mg = build_mask_groups(model, X)
    assert sum(len(p) for p in plan_by_threshold(mg, 0.0)) == 0
    with torch.no_grad():
        for bn in (model.bn1, model.layer1[0].bn2, model.layer1[1].bn2):
            bn.mask.weight[0] = 0  # now the whole layer1 stream channel 0
    mg = build_mask_groups(model, X)
    assert sum(len(p) for p in plan_by_threshold(mg, 0.0)) == 1


def test_unmasked_writer_blocks_removal() -> None:
    # At split 1 the stream of layer1 has masks, but layer2's groups have none.
    model = tiny()
    insert_channel_masks(model, 1)
    with torch.no_grad():
        for _, m in iter_masks(model):
            m.weight.zero_()
    mg = build_mask_groups(model, X)
    scores = mg.scores()
    assert all(not torch.isinf(s).any() for s in scores)  # only masked groups are listed
    assert len(mg.groups) == 3  # stem/layer1 stream + two inner convs


def test_budget_infeasible_is_a_clear_error() -> None:
    model = tiny()
    st = ChannelStructure(model, 4, 1.0, X)
    with pytest.raises(BudgetError, match="cannot be met"):
        st.check(EdgeBudget(params=10))
    assert st.check(EdgeBudget(params=10_000)).params < 10_000


def test_budget_removal_meets_budget_and_is_exact() -> None:
    model = tiny()
    st = ChannelStructure(model, 4, 1.0, X)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in iter_masks(model):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    budget = count_params(edge_modules(tiny(), 2))
    removal = st.remove(EdgeBudget(params=budget), 0.0, X)
    assert removal.plan_kind == "budget"
    assert removal.edge_params <= budget
    assert removal.equivalence_rel_diff <= EQUIVALENCE_ATOL


def test_block_wise_removal() -> None:
    model = tiny()
    st = BlockStructure(model, 4, 1.0, X)
    assert len(st.blocks) == 8
    with torch.no_grad():
        st._mask("layer2.1").weight.zero_()
        st._mask("layer3.0").weight.zero_()
    removal = st.remove(None, 0.0, X)
    assert removal.removed_blocks == ["layer2.1", "layer3.0"]
    assert removal.equivalence_rel_diff <= EQUIVALENCE_ATOL
    assert type(model.layer3[0]).__name__ == "ShortcutOnly"


def test_fista_gives_exact_zeros_and_keeps_useful_masks() -> None:
    w = nn.Parameter(torch.ones(6))
    target = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    opt = FISTA([w], lr=0.1, lambda1=0.5, lambda2=0.0)
    for _ in range(200):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
    opt.finalize()
    assert torch.all(w[3:] == 0)
    assert torch.allclose(w[:3], torch.full((3,), 0.75), atol=1e-3)  # prox solution 1 - lambda/2


def test_pruned_model_saves_and_reloads_without_pickle(tmp_path: Path) -> None:
    model = tiny()
    insert_channel_masks(model, 4)
    hand_masks(model)
    mg = build_mask_groups(model, X)
    apply_plan(mg, plan_by_threshold(mg, 0.0))
    fold_masks(model)
    model.eval()
    save_run_model(tmp_path, model, tiny_model_info())
    loaded, meta = load_run_model(tmp_path)
    assert torch.equal(loaded(X), model(X))
    assert meta["input_shape"] == [3, 32, 32]


def test_custom_cnn_prunes_exactly() -> None:
    model = tiny_mobilenet_net()
    insert_channel_masks(model, 2)
    hand_masks(model, seed=4)
    ref = copy.deepcopy(model).eval()
    mg = build_mask_groups(model, X)
    assert apply_plan(mg, plan_by_threshold(mg, 0.0)) > 0
    fold_masks(model)
    model.eval()
    assert torch.allclose(ref(X), model(X), atol=EQUIVALENCE_ATOL)
