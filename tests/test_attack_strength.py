"""Attack strength that does not follow the victim: decoder families, convergence, floors.

A privacy number is only as good as the strongest attack behind it; these
tests check the properties that keep a weak attacker from being reported as a
defense: the attacker does not shrink with the pruned widths, it trains until
validation stops improving on all the data it may use, and an attack that does
not beat the label-only floor is flagged as failed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from patrol_compress.attacks import ATTACKS, Attack, AttackConfig, attack_model
from patrol_compress.attacks.base import AttackContext, Reconstruction
from patrol_compress.attacks.data import build_attack_data, identity_means
from patrol_compress.attacks.decoders import DecoderSpec, Standardize, build_decoders
from patrol_compress.attacks.evaluate import find_recipe
from patrol_compress.data import build_data
from patrol_compress.models import split as split_model
from patrol_compress.models.saved import load_run_model
from patrol_compress.privacy_config import BlackboxConfig
from patrol_compress.pruning.masks import fold_masks, insert_channel_masks, iter_masks
from patrol_compress.pruning.remove import apply_plan, build_mask_groups, plan_by_threshold

from .helpers import tiny_attack_run

SIZE = 32
WIDTH_INVARIANCE_DB = 0.5
"""The issue's bound: the same edge function, narrow or zero-padded, must get
the same strongest PSNR within this much."""

STRENGTH_CONFIG: dict[str, Any] = {
    "max_eval_images": 16,
    "grid_images": 4,
    "blackbox": {
        "families": ["mirror", "upsample", "lift"],
        "base_width": 32,
        "min_width": 16,
        "max_width": 64,
        "lift_max_side": 2,
        "epochs": 30,
        "patience": 4,
        "batch_size": 16,
        "lr": 3e-3,
        "val_fraction": 0.15,
    },
    "recogniser": {"steps": 4, "width": 8},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_attack_run(tmp_path_factory.mktemp("strength"), SIZE, 4)
    finally:
        torch.set_num_threads(threads)


def padded_and_pruned(run: Path, k: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The run's model with half of every edge group's channels masked to exactly 0
    (kept in place: the zero-padded shape), and the same model with them removed."""
    model, _ = load_run_model(run)
    insert_channel_masks(model, k)
    with torch.no_grad():
        for _, m in iter_masks(model):
            m.weight[: len(m.weight) // 2] = 0.0
    padded = copy.deepcopy(model).eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mg = build_mask_groups(model, x)
    assert apply_plan(mg, plan_by_threshold(mg, 0.0)) > 0
    fold_masks(model)
    return padded, model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 4])
def test_strongest_attack_is_width_invariant(run: Path, tmp_path: Path, k: int) -> None:
    padded, pruned = padded_and_pruned(run, k)
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    z_pad, z_pru = split_model(padded, k)[0](x), split_model(pruned, k)[0](x)
    assert z_pad.shape[1] > z_pru.shape[1]  # two shapes of one function
    _, meta = load_run_model(run)
    recipe = find_recipe(run)
    cfg = AttackConfig.model_validate(STRENGTH_CONFIG)
    scores = {}
    for name, model in (("padded", padded), ("pruned", pruned)):
        report = attack_model(model, meta, recipe, ["blackbox"], k, cfg, tmp_path / name)
        scores[name] = report["attacks"]["blackbox"]
    gap = abs(scores["padded"]["psnr"] - scores["pruned"]["psnr"])
    assert gap <= WIDTH_INVARIANCE_DB, scores
    # The fixed-width families see the same network either way.
    for family in ("upsample", "lift") if k == 4 else ("upsample",):
        a = scores["padded"]["info"]["families"][family]
        b = scores["pruned"]["info"]["families"][family]
        assert a["decoder_params"] == b["decoder_params"]
        assert abs(a["psnr"] - b["psnr"]) <= WIDTH_INVARIANCE_DB


def test_fixed_width_decoders_ignore_constant_channels() -> None:
    """Zero channels are dropped: the padded spec builds the narrow spec's decoders exactly."""
    shapes = [((3, 32, 32), (8, 8, 8))]
    mean, std = torch.rand(8), torch.rand(8) + 0.1
    pad_mean = torch.cat([mean, torch.zeros(8)])
    pad_std = torch.cat([std, torch.zeros(8)])
    cfg = BlackboxConfig(base_width=16, min_width=8, lift_max_side=8)
    narrow = DecoderSpec(shapes, (8, 8, 8), (3, 32, 32), mean, std)
    padded = DecoderSpec([((3, 32, 32), (16, 8, 8))], (16, 8, 8), (3, 32, 32), pad_mean, pad_std)
    z = torch.randn(5, 8, 8, 8)
    z_pad = torch.cat([z, torch.zeros(5, 8, 8, 8)], 1)
    for family in ("upsample", "lift", "mirror"):
        torch.manual_seed(0)
        a = build_decoders(narrow, cfg)[family].eval()
        torch.manual_seed(0)
        b = build_decoders(padded, cfg)[family].eval()
        assert torch.equal(a(z), b(z_pad)), family


def test_standardize_scales_features_to_unit_variance() -> None:
    z = torch.randn(64, 4, 3, 3) * torch.tensor([1e-3, 1.0, 100.0, 0.0]).view(1, 4, 1, 1) + 7.0
    mean = z.mean((0, 2, 3))
    std = z.std((0, 2, 3), unbiased=False)
    out = Standardize(mean, std)(z)
    assert out.shape[1] == 3  # the constant channel is dropped
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_lift_family_only_for_tiny_maps() -> None:
    cfg = BlackboxConfig(base_width=8, min_width=8, lift_max_side=2)
    stats = torch.zeros(4), torch.ones(4)
    tiny = DecoderSpec([((3, 32, 32), (4, 2, 2))], (4, 2, 2), (3, 32, 32), *stats)
    big = DecoderSpec([((3, 32, 32), (4, 8, 8))], (4, 8, 8), (3, 32, 32), *stats)
    assert set(build_decoders(tiny, cfg)) == {"mirror", "upsample", "lift"}
    assert set(build_decoders(big, cfg)) == {"mirror", "upsample"}
    out = build_decoders(tiny, cfg)["lift"].eval()(torch.randn(2, 4, 2, 2))
    assert out.shape == (2, 3, 32, 32)


def test_attack_json_records_families_convergence_and_floors(run: Path, tmp_path: Path) -> None:
    model, meta = load_run_model(run)
    cfg = AttackConfig.model_validate(STRENGTH_CONFIG)
    report = attack_model(model, meta, find_recipe(run), ["blackbox"], 2, cfg, tmp_path)
    bb = report["attacks"]["blackbox"]
    info = bb["info"]
    assert set(info["families"]) == {"mirror", "upsample"}  # 8x8 maps: no lift
    assert info["family"] in info["families"]
    assert report["strongest"]["family"] == info["family"]
    for rec in info["families"].values():
        curve = rec["curve"]
        assert rec["epochs_run"] == len(curve) >= 1
        assert rec["stopped"] in ("plateau", "epochs")
        assert max(c["val_psnr"] for c in curve) == pytest.approx(rec["best_val_psnr"])
    per_image = bb["per_image"]
    assert len(per_image["psnr"]) == len(per_image["ssim"]) == bb["images"]
    assert sum(per_image["psnr"]) / bb["images"] == pytest.approx(bb["psnr"], abs=1e-2)
    data = info["data"]
    assert data["images_used"] == data["images_available"]  # no cap: all the attacker's images
    assert data["train_images"] + data["val_images"] == data["images_used"]
    assert data["features_cached"] and data["edge_deterministic"]
    # Both floors are recorded; the trained attacker beats the higher of them.
    assert bb["converged"] is True and report["attack_failed"] is False
    for key in ("psnr", "ssim"):
        floor = max(report["label_only"][key], report["mean_image"][key])
        assert bb["floor"][key] == pytest.approx(floor)
        assert bb[key] > floor


def test_label_only_floor_is_the_identity_mean_of_other_images(run: Path) -> None:
    recipe = find_recipe(run)
    bundle = build_data(recipe.data)
    data = build_attack_data(bundle, AttackConfig.model_validate(STRENGTH_CONFIG))
    held = [
        (ds, i) for ds in (bundle.query, bundle.gallery) if ds is not None for i in range(len(ds))
    ]
    by_pid: dict[int, list[torch.Tensor]] = {}
    for ds, i in held:
        by_pid.setdefault(ds.pids[i], []).append(ds[i][0])
    for j, pid in enumerate(data.eval_pids):
        own = data.eval_images[j]
        others = [x for x in by_pid[pid] if not torch.equal(x, own)]
        assert torch.allclose(data.label_only[j], torch.stack(others).mean(0), atol=1e-5)
    probe = held[:1]
    alone = identity_means(probe, probe, torch.full((3, SIZE, SIZE), 0.25))
    assert torch.equal(alone[0], torch.full((3, SIZE, SIZE), 0.25))  # nothing else: fallback


class LabelGuess(Attack):
    """A 'failed' attack: it returns the mean image (what an untrained decoder converges to)."""

    name = "test-label-guess"

    def run(self, ctx: AttackContext) -> Reconstruction:
        guess = ctx.mean_image.expand_as(ctx.eval_images).clone()
        return Reconstruction(guess, {"val_psnr": 0.0})


@pytest.fixture
def label_guess() -> Iterator[str]:
    """``LabelGuess`` registered for one test only (other tests list the real attacks)."""
    ATTACKS.add(LabelGuess.name, LabelGuess)
    try:
        yield LabelGuess.name
    finally:
        ATTACKS._items.pop(LabelGuess.name)


def test_attack_at_the_floor_is_flagged_failed_not_private(
    run: Path, tmp_path: Path, label_guess: str
) -> None:
    model, meta = load_run_model(run)
    cfg = AttackConfig.model_validate(STRENGTH_CONFIG)
    report = attack_model(model, meta, find_recipe(run), [label_guess], 2, cfg, tmp_path)
    assert report["attacks"]["test-label-guess"]["converged"] is False
    assert report["strongest"]["converged"] is False
    assert report["attack_failed"] is True


def test_runs_resolved_before_inits_still_load() -> None:
    """Older run folders resolved ``whitebox.init``; they load and get the decoder start too."""
    from patrol_compress.privacy_config import WhiteboxConfig

    assert WhiteboxConfig.model_validate({"init": "gray"}).inits == ["gray", "decoder"]
    assert WhiteboxConfig.model_validate({"init": "decoder"}).inits == ["decoder"]
    assert AttackConfig.model_validate({"whitebox": {"init": "mean"}}).whitebox.inits == [
        "mean",
        "decoder",
    ]


def test_attacker_data_too_big_for_memory_is_streamed(run: Path, tmp_path: Path) -> None:
    """Above ``feature_cache_mb`` the images are read and the edge queried per batch;
    the batches are the same, so the attacker is as strong."""
    model, meta = load_run_model(run)
    recipe = find_recipe(run)
    scores = {}
    for mb in (0, 4096):
        data = {**STRENGTH_CONFIG, "blackbox": {**STRENGTH_CONFIG["blackbox"]}}
        data["blackbox"].update({"feature_cache_mb": mb, "families": ["upsample"], "epochs": 6})
        cfg = AttackConfig.model_validate(data)
        report = attack_model(model, meta, recipe, ["blackbox"], 2, cfg, tmp_path / str(mb))
        scores[mb] = report["attacks"]["blackbox"]
    assert scores[0]["info"]["data"]["in_memory"] is False
    assert scores[0]["info"]["data"]["features_cached"] is False
    assert scores[4096]["info"]["data"]["in_memory"] is True
    assert abs(scores[0]["psnr"] - scores[4096]["psnr"]) <= WIDTH_INVARIANCE_DB
