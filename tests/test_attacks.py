"""Inversion attacks: registry, per-image metrics, black/white-box and adaptive attacks, CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from patrol_compress.attacks import ATTACKS, AttackConfig, AttackError, attack, load_attack_config
from patrol_compress.attacks.base import Attack, AttackContext, Reconstruction
from patrol_compress.attacks.data import build_attack_data
from patrol_compress.attacks.whitebox import rmle
from patrol_compress.cli.app import app
from patrol_compress.data import build_data
from patrol_compress.errors import ArtifactError, PatrolError, RecipeError
from patrol_compress.exporters import export_partitions
from patrol_compress.metrics.image import (
    PSNR_CAP_DB,
    image_metrics,
    l2_per_image,
    psnr_per_image,
    region_metrics,
    ssim_per_image,
)
from patrol_compress.models import build_model, split
from patrol_compress.recipe import parse_recipe
from patrol_compress.registry import RegistryError

from .helpers import tiny_attack_run, tiny_recipe_dict

SIZE = 32
SPLIT = 1
EXACT = 1e-5
"""Tolerance for values that are exact in real arithmetic (float32 rounding only)."""

MIN_GAIN_DB = 1.5
"""Black-box PSNR must beat the mean image by this much (measured: +3.0 to +3.3 dB, seeds 0-2)."""

# Small enough for seconds on one thread, large enough for the black-box decoder to
# beat the mean image clearly.
TINY_ATTACK: dict[str, Any] = {
    "max_eval_images": 12,
    "grid_images": 4,
    "blackbox": {"epochs": 12, "batch_size": 16, "min_width": 16, "refine": 1, "lr": 5e-3},
    "adaptive": {"epochs": 2, "batch_size": 16, "min_width": 8, "refine": 0},
    "whitebox": {"steps": 20, "check_every": 5, "val_images": 8},
    "recogniser": {"steps": 4, "width": 8},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpruned width-0.125 ResNet saved as a run (split 1) with its resolved recipe."""
    threads = torch.get_num_threads()  # module fixtures run before conftest's 1-thread rule
    torch.set_num_threads(1)
    try:
        return tiny_attack_run(tmp_path_factory.mktemp("attack"), SIZE, SPLIT)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def tiny_config(**changes: Any) -> AttackConfig:
    return AttackConfig.model_validate({**TINY_ATTACK, **changes})


# ------------------------------------------------------------------------------ registry


def test_registry_lists_attacks_and_refuses_duplicates() -> None:
    assert ATTACKS.names() == ["adaptive", "blackbox", "informed", "whitebox"]

    class Other(Attack):
        name = "blackbox"

        def run(self, ctx: AttackContext) -> Reconstruction:
            return Reconstruction(ctx.eval_images)

    with pytest.raises(RegistryError, match="already registered"):
        ATTACKS.add("blackbox", Other)
    with pytest.raises(RegistryError, match="did you mean 'blackbox'") as err:
        ATTACKS.get("blackbx")
    assert "adaptive, blackbox, informed, whitebox" in str(err.value)


def test_unknown_attack_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown attack 'rmle'"):
        attack(tmp_path / "no-run", ["rmle"])
    with pytest.raises(AttackError, match="no attack selected"):
        attack(tmp_path / "no-run", [])


# ------------------------------------------------------------------------------- metrics


def test_psnr_of_known_mse_and_identical_images() -> None:
    x = torch.zeros(2, 3, 16, 16)
    x_hat = x.clone()
    x_hat[1] += 0.1  # MSE 0.01 -> 20 dB exactly
    psnr = psnr_per_image(x, x_hat)
    assert psnr[0] == PSNR_CAP_DB  # identical: +inf, capped so means stay finite
    assert abs(float(psnr[1]) - 20.0) < EXACT
    assert abs(float(l2_per_image(x, x_hat)[1]) - 0.1 * math.sqrt(3 * 16 * 16)) < EXACT
    ssim = ssim_per_image(torch.rand(1, 3, 16, 16).expand(2, -1, -1, -1), x_hat * 0 + 0.5)
    assert ssim.shape == (2,)
    same = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim_per_image(same, same), torch.ones(2), atol=EXACT)


def test_metrics_average_per_image_not_pooled() -> None:
    x = torch.zeros(2, 1, 16, 16)
    x_hat = x.clone()
    x_hat[0] += 0.1  # 20 dB
    x_hat[1] += 0.01  # 40 dB
    m = image_metrics(x, x_hat)
    assert abs(m["psnr"] - 30.0) < 1e-4  # pooled MSE would give ~22.97 dB
    assert abs(m["mse"] - (0.01 + 0.0001) / 2) < 1e-7
    per = ssim_per_image(x, x_hat)
    assert abs(m["ssim"] - float(per.mean())) < EXACT


def test_region_metrics_see_only_the_box() -> None:
    x = torch.zeros(1, 3, 20, 20)
    outside = x.clone()
    outside[:, :, :2, :2] = 1.0
    inside = x.clone()
    inside[:, :, 10:14, 10:14] += 0.1
    box = (0.5, 0.5, 0.7, 0.7)  # rows/cols 10..13
    assert region_metrics(x, outside, box)["psnr"] == PSNR_CAP_DB
    assert abs(region_metrics(x, inside, box)["psnr"] - 20.0) < 1e-4
    with pytest.raises(PatrolError, match="same shape"):
        image_metrics(x, x[:, :1])


def test_region_metrics_with_per_image_boxes_skip_empty_boxes() -> None:
    x = torch.zeros(3, 3, 20, 20)
    x_hat = x.clone()
    x_hat[0, :, 10:14, 10:14] += 0.1  # inside image 0's box
    x_hat[1, :, 0:4, 0:4] += 0.5  # outside image 1's box
    x_hat[2] += 0.9  # image 2's plate is not in the picture: left out
    boxes = torch.tensor([[0.5, 0.5, 0.7, 0.7], [0.5, 0.5, 0.7, 0.7], [0.0, 0.0, 0.0, 0.0]])
    out = region_metrics(x, x_hat, boxes)
    assert out["images"] == 2
    assert abs(out["psnr"] - (20.0 + PSNR_CAP_DB) / 2) < 1e-3
    with pytest.raises(PatrolError, match="3 x 4"):
        region_metrics(x, x_hat, boxes[:2])


def test_attack_scores_the_generated_plates_exact_boxes(run_copy: Path) -> None:
    report = attack(run_copy, ["blackbox"], config=tiny_config(blackbox={"epochs": 1}))
    assert "exact per-image box" in report["region_note"]
    assert report["attacks"]["blackbox"]["region"]["images"] > 0


# --------------------------------------------------------------------------------- data


def test_auxiliary_attacker_never_sees_evaluated_identities(tiny_run: Path) -> None:
    recipe = parse_recipe(yaml.safe_load((tiny_run / "recipe.resolved.yaml").read_text()))
    bundle = build_data(recipe.data)
    assert bundle.query is not None and bundle.gallery is not None
    held_pids = set(bundle.query.pids) | set(bundle.gallery.pids)

    default = build_attack_data(bundle, tiny_config())
    assert len(default.attacker) == len(bundle.train)
    assert set(default.eval_pids) == held_pids

    aux = build_attack_data(bundle, tiny_config(attacker_data="auxiliary"))
    attacker_pids = {ds.pids[i] for ds, i in aux.attacker.refs}
    assert attacker_pids and attacker_pids < held_pids
    assert not attacker_pids & set(aux.eval_pids)
    assert set(aux.eval_pids) | attacker_pids == held_pids


# ------------------------------------------------------------------------------ attacks


def test_whitebox_rmle_reduces_feature_mismatch(tiny_run: Path) -> None:
    # Default BN statistics: with random ones, constant BN offsets dominate the
    # features and a grey image already matches them to within 1%.
    torch.manual_seed(0)
    model = build_model(parse_recipe(tiny_recipe_dict(tiny_run)).model, 8, 3, "reid", SIZE)
    edge, _ = split(model.eval(), SPLIT)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        z = edge(x)
    for param in ("sigmoid", "clamp"):
        settings = {"steps": 40, "parametrization": param, "tv_weight": 0.05}
        cfg = tiny_config(whitebox=settings).whitebox
        rec, before, after = rmle(edge, z, torch.full_like(x, 0.5), cfg)
        assert (after < 0.5 * before).all()
        assert rec.min() >= 0.0 and rec.max() <= 1.0
    assert all(p.requires_grad for p in edge.parameters())  # unfrozen afterwards


def test_block_shapes_keep_shared_layers_in_eval_mode(tiny_run: Path) -> None:
    from patrol_compress.models.split import block_shapes, edge_stage_blocks

    model = build_model(parse_recipe(tiny_recipe_dict(tiny_run)).model, 8, 3, "reid", SIZE)
    model.eval()
    shapes = block_shapes(edge_stage_blocks(model, 2), (3, SIZE, SIZE))
    assert shapes[-1][1] == (16, 8, 8)
    assert not any(m.training for m in model.modules())


def test_blackbox_beats_mean_image(run_copy: Path) -> None:
    report = attack(run_copy, ["blackbox"], config=tiny_config())
    bb, mean = report["attacks"]["blackbox"], report["mean_image"]
    assert bb["psnr"] > mean["psnr"] + MIN_GAIN_DB
    assert bb["ssim"] > mean["ssim"]
    assert report["split"] == SPLIT and report["split_source"] == "run"


def test_cloud_output_is_appended_as_constant_channels() -> None:
    from patrol_compress.attacks.informed import with_cloud_output

    codes = torch.rand(3, 2, 4, 5)
    logits = torch.randn(3, 7)
    out = with_cloud_output(codes, logits)
    assert out.shape == (3, 9, 4, 5)
    assert torch.equal(out[:, :2], codes)
    for i, j in ((0, 0), (3, 4), (1, 2)):
        assert torch.equal(out[:, 2:, i, j], logits)


def test_informed_attack_reads_the_codes_and_the_clouds_output(run_copy: Path) -> None:
    """Same attacker as the black-box one on the same images, with the cloud's output as
    extra input channels; the suite may choose either by validation PSNR."""
    from patrol_compress.models.saved import load_run_model

    report = attack(run_copy, ["blackbox", "informed"], config=tiny_config())
    bb, inf = report["attacks"]["blackbox"], report["attacks"]["informed"]
    model, _ = load_run_model(run_copy)
    edge, cloud = split(model.eval(), SPLIT)
    with torch.no_grad():
        z = edge(torch.rand(1, 3, SIZE, SIZE))
        dims = cloud(z).reshape(1, -1).shape[1]
    assert inf["info"]["code_channels"] == z.shape[1]
    assert inf["info"]["cloud_output_channels"] == dims
    assert inf["image_set"] == bb["image_set"]
    assert inf["info"]["data"]["val_images"] == bb["info"]["data"]["val_images"]
    assert inf["psnr"] > report["mean_image"]["psnr"] + MIN_GAIN_DB
    assert report["strongest"]["attack"] in ("blackbox", "informed")


def test_the_mix_loss_is_zhaos_ssim_l1_mix_and_trains_through_ssim() -> None:
    from patrol_compress.attacks.fit import MIX_SSIM_WEIGHT, reconstruction_loss

    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    recon = torch.rand(4, 1, 16, 16, requires_grad=True)
    mix = reconstruction_loss(recon, x, "mix")
    ssim = ssim_per_image(x, recon.detach()).mean()
    l1 = (recon.detach() - x).abs().mean()
    assert float(mix.detach()) == pytest.approx(
        float(MIX_SSIM_WEIGHT * (1 - ssim) + (1 - MIX_SSIM_WEIGHT) * l1), rel=1e-5
    )
    mix.backward()
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert float(reconstruction_loss(x, x, "mix")) == pytest.approx(0.0, abs=1e-5)
    mse = reconstruction_loss(recon.detach(), x, "mse")
    assert float(mse) == pytest.approx(float((recon.detach() - x).pow(2).mean()))


def test_blackbox_trains_on_the_configured_loss(run_copy: Path, tmp_path: Path) -> None:
    """The same attacker with ``loss: mix`` trains on another objective: its recorded training
    loss is the mix (SSIM term included), not the MSE the default run records."""
    runs = {}
    for loss in ("mse", "mix"):
        cfg = tiny_config(blackbox={**TINY_ATTACK["blackbox"], "epochs": 2, "loss": loss})
        report = attack(run_copy, ["blackbox"], config=cfg, out=tmp_path / loss)
        runs[loss] = report["attacks"]["blackbox"]
    first = {k: r["info"]["families"][r["info"]["family"]]["curve"][0] for k, r in runs.items()}
    # On [0, 1] images the MSE of a fresh decoder is well below 0.2; 1 - SSIM is not.
    assert first["mse"]["train_mse"] < 0.2 < first["mix"]["train_mse"]
    assert runs["mix"]["image_set"] == runs["mse"]["image_set"]


def test_adaptive_attack_uses_the_exported_edge(run_copy: Path) -> None:
    from patrol_compress.models.saved import load_run_model

    model, _ = load_run_model(run_copy)
    artifact = run_copy / "export" / f"onnx-split{SPLIT}-fp32"
    export_partitions(model, SPLIT, artifact, "onnx", "fp32", (3, SIZE, SIZE))
    report = attack(run_copy, ["adaptive"], config=tiny_config())
    info = report["attacks"]["adaptive"]["info"]
    assert info["exported_now"] is False and info["artifact"] == str(artifact)
    assert info["max_abs_diff_vs_torch"] < 1e-4
    assert math.isfinite(report["attacks"]["adaptive"]["psnr"])


def test_tampered_edge_onnx_is_refused(run_copy: Path) -> None:
    from patrol_compress.models.saved import load_run_model

    model, _ = load_run_model(run_copy)
    artifact = run_copy / "export" / f"onnx-split{SPLIT}-fp32"
    export_partitions(model, SPLIT, artifact, "onnx", "fp32", (3, SIZE, SIZE))
    edge = artifact / "edge.onnx"
    blob = bytearray(edge.read_bytes())
    blob[-5] ^= 0xFF
    edge.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="edge.onnx"):
        attack(run_copy, ["adaptive"], config=tiny_config())
    assert not (run_copy / "attack.json").exists()


def test_attack_config_is_closed(tmp_path: Path) -> None:
    bad = tmp_path / "a.yaml"
    bad.write_text("blackbox: {epochs: 3, widht: 8}\n")
    with pytest.raises(RecipeError, match=r"a\.yaml: blackbox\.widht: unknown key"):
        load_attack_config(bad)
    bad.write_text("region: {box: [0.5, 0.1, 0.4, 0.9]}\n")
    with pytest.raises(RecipeError, match="region"):
        load_attack_config(bad)


# ---------------------------------------------------------------------------------- CLI


def test_cli_writes_attack_json_and_grid(run_copy: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "attack.yaml"
    cfg.write_text(yaml.safe_dump(TINY_ATTACK))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["attack", str(run_copy), "--attack", "blackbox,whitebox,adaptive"]
        + ["--config", str(cfg), "--out", str(out), "--label", "my edge"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "attack.json").read_text())
    assert report["split"] == SPLIT
    assert report["label"] == "my edge" and report["series"] == "none"
    assert report["accuracy"]["metric"] == "rank1" and 0 <= report["accuracy"]["value"] <= 1
    assert report["edge"]["params"] > 0 and report["edge"]["bytes_sent"] > 0
    # The strongest attack is the attacker's choice on its own validation images, and
    # every attack is scored on the same evaluation images.
    best = max(report["attacks"], key=lambda n: report["attacks"][n]["val_psnr"])
    assert report["strongest"]["attack"] == best
    sets = {json.dumps(a["image_set"], sort_keys=True) for a in report["attacks"].values()}
    assert len(sets) == 1 and report["strongest"]["image_set"]["images"] == 12
    for name in ("blackbox", "whitebox", "adaptive"):
        for key in ("psnr", "ssim", "mse", "attack_accuracy"):
            assert math.isfinite(report["attacks"][name][key])
        assert report["attacks"][name]["images"] == 12
    assert report["attacks"]["adaptive"]["info"]["exported_now"] is True
    assert set(report["mean_image"]) >= {"psnr", "ssim"}
    assert "per image" in report["metric_note"]
    assert report["config"]["blackbox"]["epochs"] == TINY_ATTACK["blackbox"]["epochs"]
    with Image.open(out / "attack_grid.png") as grid:
        side = (2 + 4 * (SIZE + 2)) * 3  # 4 x 4 cells with 2 px borders, enlarged 3x to >= 96 px
        assert grid.size == (side, side)  # 4 images; original + 3 attack rows
    assert "blackbox" in result.output and "mean image" in result.output
    assert "label only" in result.output


def test_cli_bad_split_is_one_line_exit_2(run_copy: Path) -> None:
    result = CliRunner().invoke(app, ["attack", str(run_copy), "--split", "9"])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "split 9" in result.output


def test_importing_attacks_does_not_load_onnxruntime() -> None:
    code = "import sys, patrol_compress.attacks; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
