"""``adversarial.surrogate: suite``: the attack suite's decoders as PATROL's attacker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patrol_compress.data import build_data
from patrol_compress.models.inversion import reconstruction_l2
from patrol_compress.models.split import edge_stage_blocks
from patrol_compress.pipeline import prune
from patrol_compress.pruner import PatrolPruner
from patrol_compress.pruning.patrol import (
    SuiteSurrogate,
    fixed_attacker,
    make_surrogate,
    surrogate_fit_loss,
)

from .helpers import tiny_recipe, tiny_resnet

SUITE = {"enabled": True, "surrogate": "suite", "adversary_every": 1, "warmup_epochs": 1}


def test_suite_has_the_attack_families_and_the_edge_fights_the_strongest(
    tmp_path: Path,
) -> None:
    recipe = tiny_recipe(tmp_path, adversarial=SUITE)
    data = build_data(recipe.data)
    model = tiny_resnet()
    surrogate = make_surrogate(model, recipe, data)
    assert isinstance(surrogate, SuiteSurrogate)
    # The tiny net's split-4 map is 2x2 at 32 px: every family applies, as in the suite.
    assert sorted(surrogate.decoders) == sorted(recipe.attack.blackbox.families)
    edge = edge_stage_blocks(model, recipe.patrol.split)
    x = torch.rand(6, 3, 32, 32)
    z = x
    for b in edge:
        z = b(z)
    z = z.detach().requires_grad_(True)
    surrogate.eval()
    errors = [float(reconstruction_l2(x, d(z)).detach()) for d in surrogate.decoders.values()]
    attacker = fixed_attacker(surrogate)
    adv = attacker(x, z)
    assert float(adv.detach()) == pytest.approx(min(errors), rel=1e-5)
    adv.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    # The fixed attacker is a frozen copy: the surrogate's weights get no gradient.
    assert all(p.grad is None for p in surrogate.parameters())
    fit = surrogate_fit_loss(surrogate, x, z.detach())
    assert float(fit.detach()) == pytest.approx(sum(errors), rel=1e-5)


def test_prune_with_the_suite_surrogate_runs_and_reports_its_strength(tmp_path: Path) -> None:
    prune(tiny_recipe(tmp_path, adversarial=SUITE), quiet=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 5.0 < metrics["surrogate_psnr"] < 60.0
    summary = json.loads((tmp_path / "run" / "patrol" / "summary.json").read_text())
    assert all("adv" in epoch for epoch in summary["history"])


def test_mirror_stays_the_default_and_the_plugin_takes_the_suite() -> None:
    """The plug-in gained the suite surrogate: built from the first images it is given,
    fitted at the first epoch, and the edge fights the strongest of its decoders."""
    assert tiny_recipe(Path("unused")).patrol.adversarial.surrogate == "mirror"
    model = tiny_resnet()
    images = torch.rand(16, 3, 32, 32)
    pruner = PatrolPruner(
        model,
        images[:2],
        split=4,
        total_steps=4,
        config={"adversarial": {"surrogate": "suite", "adversary_every": 1}},
    )
    assert pruner.surrogate is None  # built when first needed, from the images given
    batches = [(images[:8], None), (images[8:], None)]
    pruner.begin_epoch(batches)
    assert isinstance(pruner.surrogate, SuiteSurrogate)
    _, privacy = pruner(images[:8])
    assert set(pruner.last_terms) == {"lip", "adv"} and float(privacy.detach()) < 0
