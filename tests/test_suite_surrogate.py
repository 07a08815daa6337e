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
from patrol_compress.pruning.surrogate import psnr_of_pairs, train_surrogate

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
    # The attacker's strength when it was fixed is logged beside the error the edge raises.
    assert all(5.0 < epoch["adv_fit_psnr"] < 60.0 for epoch in summary["history"])


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
    assert set(pruner.last_terms) == {"lip", "adv", "adv_fit_psnr"}
    assert float(privacy.detach()) < 0


@pytest.mark.parametrize("adversarial", [SUITE, {"enabled": True}], ids=["suite", "mirror"])
def test_fit_psnr_is_the_fitted_attackers_psnr_on_its_last_batches(
    tmp_path: Path, adversarial: dict[str, object]
) -> None:
    """What ``train_surrogate`` returns is the fitted surrogate's PSNR on the final pass's last
    batches, computed with the weights it ends with (not the loss on the way)."""
    recipe = tiny_recipe(tmp_path, adversarial=adversarial)
    model = tiny_resnet().eval()
    surrogate = make_surrogate(model, recipe, build_data(recipe.data))
    edge = edge_stage_blocks(model, recipe.patrol.split)
    torch.manual_seed(0)
    batches = [(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    opt = torch.optim.Adam(surrogate.parameters(), lr=1e-2)
    got = train_surrogate(surrogate, edge, batches, opt, 2, torch.device("cpu"))
    pairs = []
    with torch.no_grad():
        for x, _ in batches[-2:]:
            z = x
            for b in edge:
                z = b(z)
            pairs.append((x, z))
    assert got == pytest.approx(psnr_of_pairs(surrogate, pairs), rel=1e-6)
    first = psnr_of_pairs(surrogate, pairs[:1])
    assert got != pytest.approx(first, rel=1e-6)  # both batches count, not just one
