"""The distance-correlation term (``patrol.decorrelation``, NoPeek)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patrol_compress import PatrolPruner
from patrol_compress.errors import RecipeError
from patrol_compress.pipeline import prune
from patrol_compress.pruning.dcor import distance_correlation
from patrol_compress.recipe import parse_recipe

from .helpers import tiny_recipe, tiny_recipe_dict, tiny_resnet


def test_dcor_is_one_for_a_similarity_and_small_for_independent_batches() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    # A similarity of x keeps every pairwise distance's ratio: dCor = 1.
    assert float(distance_correlation(x, 3.0 * x + 1.0)) == pytest.approx(1.0, abs=1e-4)
    independent = float(distance_correlation(x, torch.randn(64, 5, 2, 2, generator=g)))
    dependent = float(distance_correlation(x, x[:, :1].tanh()))  # one channel of x, bent
    # The plain estimator read 0.85 for the independent pair (bias growing with dimension).
    assert abs(independent) < 0.05 < 0.1 < dependent < 1.0


def test_dcor_refuses_mismatched_or_single_batches() -> None:
    with pytest.raises(ValueError, match=">= 4"):
        distance_correlation(torch.rand(4, 3), torch.rand(3, 3))
    with pytest.raises(ValueError, match=">= 4"):
        distance_correlation(torch.rand(3, 3), torch.rand(3, 3))


def test_the_pruner_adds_the_weighted_term_with_a_gradient_to_the_edge() -> None:
    model = tiny_resnet()
    x = torch.rand(8, 3, 32, 32)
    plain = PatrolPruner.for_recovery(model, x[:2], split=2)
    _, none = plain(x)
    assert float(none) == 0.0 and "dcor" not in plain.last_terms
    plain.close()
    cfg = {"decorrelation": {"enabled": True, "weight": 2.5}}
    pruner = PatrolPruner.for_recovery(model, x[:2], split=2, config=cfg)
    model.train()
    _, term = pruner(x)
    assert float(term.detach()) == pytest.approx(2.5 * pruner.last_terms["dcor"], rel=1e-5)
    assert 0.0 < pruner.last_terms["dcor"] <= 1.0  # an untrained edge is far from independent
    term.backward()
    grad = model.layer1[0].conv1.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert model.head.classifier.weight.grad is None  # the cloud is not in the term
    pruner.close()


@pytest.mark.parametrize("weight", [0, -1, "a"])
def test_a_bad_weight_is_one_line_naming_the_field(tmp_path: Path, weight: object) -> None:
    data = tiny_recipe_dict(tmp_path, decorrelation={"enabled": True, "weight": weight})
    with pytest.raises(RecipeError, match="decorrelation.weight") as err:
        parse_recipe(data)
    assert "\n" not in str(err.value)


def test_a_tiny_prune_records_the_term_in_both_stages(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tmp_path,
        epochs=1,
        lipschitz={"enabled": False},
        adversarial={"enabled": False},
        decorrelation={"enabled": True, "weight": 1.0},
    )
    prune(recipe, quiet=True)
    run = tmp_path / "run"
    history = json.loads((run / "patrol" / "summary.json").read_text())["history"]
    assert all("dcor" in epoch for epoch in history)
    assert json.loads((run / "stages.json").read_text())["recover"]
