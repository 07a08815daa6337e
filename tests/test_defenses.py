"""Baseline defenses: the perturbation modules, defended copies, APP, the sweep and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from patrol_compress.cli.app import app
from patrol_compress.data import build_data
from patrol_compress.defenses import DEFENSES, DefenseContext, defend
from patrol_compress.defenses.perturb import (
    FeatureDropout,
    GaussianNoise,
    SkipConnections,
    wrap_edge_convs,
)
from patrol_compress.errors import RecipeError
from patrol_compress.models import split
from patrol_compress.models.saved import load_run_model
from patrol_compress.privacy_config import DefenseSweep
from patrol_compress.recipe import load_recipe, parse_recipe

from .helpers import tiny_attack_run, tiny_recipe_dict, tiny_resnet

TINY_ATTACK = {
    "max_eval_images": 8,
    "grid_images": 3,
    "blackbox": {"epochs": 2, "batch_size": 16, "min_width": 8, "refine": 0},
    "recogniser": {"steps": 3, "width": 8},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_attack_run(tmp_path_factory.mktemp("defend"), attack=TINY_ATTACK)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------ perturbations


def test_noise_is_relative_to_feature_rms_and_active_in_eval() -> None:
    z = torch.randn(4, 8, 16, 16) * 50.0
    noise = GaussianNoise(0.5).eval()
    diff = noise(z) - z
    rms = z.pow(2).mean(dim=(1, 2, 3)).sqrt()
    ratio = diff.flatten(1).std(dim=1) / rms
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5), atol=0.03)
    assert torch.equal(GaussianNoise(0.0)(z), z)


def test_dropout_drops_the_fraction_in_eval_mode_and_keeps_the_mean() -> None:
    z = torch.ones(4, 64, 16, 16)
    out = FeatureDropout(0.75).eval()(z)
    zero = (out == 0).float().mean().item()
    assert zero == pytest.approx(0.75, abs=0.02)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)


def test_skip_resamples_per_pass_and_is_unbiased() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 8, 8)
    assert torch.equal(SkipConnections(conv, 0.0)(x), conv(x))
    skip = SkipConnections(conv, 0.5)
    a, b = skip(x), skip(x)
    assert not torch.allclose(a, b)
    with torch.no_grad():
        mean = torch.stack([skip(x) for _ in range(800)]).mean(0)
    ref = conv(x).detach()
    assert (mean - ref).abs().mean() < 0.1 * ref.abs().mean()


def test_skip_wraps_only_edge_convolutions() -> None:
    model = tiny_resnet()
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n = wrap_edge_convs(model, 1, 0.3)
    wrapped = sum(isinstance(m, SkipConnections) for m in model.modules())
    assert n == wrapped > 0
    edge, cloud = split(model, 1)
    assert not any(isinstance(m, SkipConnections) for m in cloud.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs


# ------------------------------------------------------------------------ defended copies


@pytest.mark.parametrize(("name", "strength"), [("noise", 0.5), ("dropout", 0.5), ("skip", 0.3)])
def test_defended_copy_perturbs_the_edge_only_and_leaves_the_original(
    tmp_path: Path, name: str, strength: float
) -> None:
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    recipe = parse_recipe(tiny_recipe_dict(tmp_path))
    ctx = DefenseContext(None, recipe, DefenseSweep(name=name), torch.device("cpu"))  # type: ignore[arg-type]
    defended = DEFENSES.get(name)().apply(model, 2, strength, ctx)
    edge, cloud = split(defended, 2)
    with torch.no_grad():
        z1, z2 = edge(x), edge(x)
        assert not torch.allclose(z1, z2)  # random on every pass, in eval mode
        assert torch.equal(cloud(z1), cloud(z1))  # the cloud is untouched and deterministic
        assert not torch.allclose(defended(x), ref)
        assert torch.equal(model(x), ref)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_app_retrains_the_target_and_keeps_it_usable(tiny_run: Path) -> None:
    model, _ = load_run_model(tiny_run)
    recipe = load_recipe(tiny_run / "recipe.resolved.yaml")
    bundle = build_data(recipe.data)
    sweep = DefenseSweep(name="app", epochs=1, lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defended = DEFENSES.get("app")().apply(
        model, 1, 1.0, DefenseContext(bundle, recipe, sweep, torch.device("cpu"))
    )
    changed = [k for k, v in defended.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "APP must change the target's weights"
    x = bundle.query[0][0][None]
    assert torch.isfinite(defended.eval()(x)).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------ recipe section


def test_sweep_defaults_and_validation() -> None:
    assert DefenseSweep(name="app").epochs == 4
    assert DefenseSweep(name="noise").epochs == 0
    assert DefenseSweep(name="dropout").strengths
    with pytest.raises(ValueError, match="fractions below 1"):
        DefenseSweep(name="dropout", strengths=[0.5, 1.0])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        DefenseSweep(name="app", epochs=0)


# ------------------------------------------------------------------------ sweep + CLI


def test_defend_writes_one_attacked_point_per_strength_and_resumes(
    tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "def"
    summary = defend(tiny_run, ["noise", "dropout"], [0.0, 0.9], split=1, out=out)
    folders = [p["folder"] for p in summary["points"]]
    assert folders == ["none", "noise-0", "noise-0.9", "dropout-0", "dropout-0.9"]
    none = json.loads((out / "none" / "attack.json").read_text())
    noisy = json.loads((out / "noise-0.9" / "attack.json").read_text())
    quiet = json.loads((out / "noise-0" / "attack.json").read_text())
    assert none["series"] == "none" and none["defense"] is None
    assert noisy["series"] == "noise" and noisy["defense"]["strength"] == 0.9
    assert noisy["label"] == "noise sigma=0.9 split 1"
    # Strength 0 is the undefended model: same accuracy, same edge size.
    assert quiet["accuracy"]["value"] == pytest.approx(none["accuracy"]["value"])
    assert noisy["edge"] == none["edge"]
    assert (out / "noise-0.9" / "attack_grid.png").is_file()
    assert {"attack", "family", "psnr", "ssim", "converged", "val_psnr", "image_set"} <= set(
        noisy["strongest"]
    )
    assert noisy["attacks"]["blackbox"]["info"]["data"]["edge_deterministic"] is False
    # Resume: existing points are kept byte for byte.
    stamp = (out / "noise-0.9" / "attack.json").read_bytes()
    again = defend(tiny_run, ["noise"], [0.9], split=1, out=out, include_undefended=False)
    assert [p["folder"] for p in again["points"]] == ["noise-0.9"]
    assert (out / "noise-0.9" / "attack.json").read_bytes() == stamp


def test_defend_cli_rejects_an_unknown_defense_with_one_line(tiny_run: Path) -> None:
    res = CliRunner().invoke(app, ["defend", str(tiny_run), "--defense", "nosie"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "nosie" in res.output


def test_select_sweeps_rejects_out_of_range_strengths(tiny_run: Path) -> None:
    from patrol_compress.defenses.sweep import select_sweeps

    recipe = load_recipe(tiny_run / "recipe.resolved.yaml")
    with pytest.raises(RecipeError, match="--strengths: .*fractions below 1"):
        select_sweeps(recipe, ["dropout"], [1.5])
