"""Attack results that can be published: same images, choices on the attacker's data, resume.

The evaluation images only score. These tests check that every attack of a
point is scored on the same images and that ``strongest`` refuses mixed sets;
that the decoder family and the white-box start are chosen on the attacker's
validation images whatever the evaluation images say; that the white-box is
never weaker than its start on those validation images on a trained split-4
edge (the image metric, not only the feature match); and that an interrupted
attack resumes from its finished parts to exactly the result of one that was
not interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from patrol_compress.api import attack, train
from patrol_compress.attacks import AttackConfig
from patrol_compress.attacks import blackbox as blackbox_module
from patrol_compress.attacks import fit as fit_module
from patrol_compress.attacks.base import AttackError
from patrol_compress.attacks.evaluate import strongest
from patrol_compress.attacks.parts import PARTS_DIR
from patrol_compress.cli.app import app

from .helpers import tiny_recipe_dict

SIZE = 32
SPLIT = 4
START_TOLERANCE_DB = 0.5
"""On the evaluation images the white-box may fall below its start by at most this
much: its step count is chosen on other (validation) images."""

CONFIG: dict[str, Any] = {
    "max_eval_images": 12,
    "grid_images": 4,
    "blackbox": {
        "families": ["mirror", "upsample", "lift"],
        "base_width": 16,
        "min_width": 8,
        "max_width": 32,
        "lift_max_side": 2,
        "epochs": 4,
        "patience": 2,
        "batch_size": 16,
        "lr": 3e-3,
        "val_fraction": 0.2,
    },
    "whitebox": {"steps": 30, "check_every": 5, "patience": 3, "val_images": 8},
    "recogniser": {"steps": 4, "width": 8},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny target (split 4, 2x2 maps at 32 px) with its resolved recipe."""
    root = tmp_path_factory.mktemp("selection")
    recipe = tiny_recipe_dict(root)
    recipe["train"]["epochs"] = 3
    recipe["attack"] = CONFIG
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(recipe, out=root / "run", quiet=True)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def _result(images: int, digest: str, val: float, psnr: float) -> dict[str, Any]:
    return {
        "psnr": psnr,
        "ssim": 0.5,
        "val_psnr": val,
        "image_set": {"images": images, "sha256": digest},
        "info": {},
    }


def test_strongest_refuses_scores_on_different_images() -> None:
    mixed = {"blackbox": _result(500, "a", 20.0, 20.0), "whitebox": _result(32, "b", 21.0, 27.1)}
    with pytest.raises(AttackError, match="different evaluation images.*32 images"):
        strongest(mixed)
    same = {"blackbox": _result(500, "a", 20.0, 19.0), "whitebox": _result(500, "a", 19.0, 25.0)}
    best = strongest(same)
    # Chosen on validation; the evaluation maximum is recorded beside it, not used.
    assert best["attack"] == "blackbox" and best["psnr"] == 19.0
    assert best["eval_max_psnr"] == 25.0


def test_family_is_chosen_on_validation_whatever_the_evaluation_says(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The family with the best validation score is reported even where another family
    scores better on the evaluation images (here: the one worst on evaluation)."""
    real = fit_module.fit_decoder
    val_scores: dict[str, float] = {}

    def fit(decoder: Any, data: Any, cfg: Any, device: Any, label: str, *a: Any, **k: Any) -> Any:
        record = real(decoder, data, cfg, device, label, *a, **k)
        family = label.split("/")[-1]
        if family in val_scores:
            record["best_val_psnr"] = val_scores[family]
        return record

    monkeypatch.setattr(blackbox_module, "fit_decoder", fit)
    first = attack(trained, ["blackbox"], config=None, out=tmp_path / "a")
    families = first["attacks"]["blackbox"]["info"]["families"]
    worst_on_eval = min(families, key=lambda f: families[f]["psnr"])
    val_scores.update({f: (99.0 if f == worst_on_eval else 1.0) for f in families})
    second = attack(trained, ["blackbox"], config=None, out=tmp_path / "b")
    info = second["attacks"]["blackbox"]["info"]
    assert info["family"] == worst_on_eval
    assert second["attacks"]["blackbox"]["psnr"] == pytest.approx(families[worst_on_eval]["psnr"])
    assert second["attacks"]["blackbox"]["psnr"] < max(f["psnr"] for f in families.values())


def test_whitebox_is_never_weaker_than_its_start_on_a_trained_split4_edge(
    trained: Path, tmp_path: Path
) -> None:
    report = attack(trained, ["blackbox", "whitebox"], config=None, out=tmp_path / "wb")
    wb = report["attacks"]["whitebox"]
    info = wb["info"]
    for name, cand in info["families"].items():
        # Step 0 (the start) is a candidate: the chosen step is never below it on validation.
        assert cand["val_psnr"] >= cand["start_val_psnr"], name
        assert cand["val_curve"][0]["step"] == 0
    chosen = info["families"][info["family"]]
    assert info["val_psnr"] == max(c["val_psnr"] for c in info["families"].values())
    assert info["steps"] == chosen["best_step"]
    # On the evaluation images: the image metric, not only the feature match.
    assert wb["psnr"] >= info["start_psnr"] - START_TOLERANCE_DB


def test_interrupted_attack_resumes_to_the_same_result(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = attack(trained, ["blackbox", "whitebox"], config=None, out=tmp_path / "clean")
    assert not (tmp_path / "clean" / PARTS_DIR).exists()  # parts go once attack.json is written

    real = fit_module.fit_decoder
    trained_families: list[str] = []

    def dies_on_second(
        decoder: Any, data: Any, cfg: Any, device: Any, label: str, *a: Any, **k: Any
    ) -> Any:
        if len(trained_families) == 1:
            raise KeyboardInterrupt  # the fault at a given step: the second family's start
        trained_families.append(label)
        return real(decoder, data, cfg, device, label, *a, **k)

    monkeypatch.setattr(blackbox_module, "fit_decoder", dies_on_second)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        attack(trained, ["blackbox", "whitebox"], config=None, out=out)
    assert not (out / "attack.json").exists()
    assert len(list((out / PARTS_DIR).glob("blackbox__*.json"))) == 1

    retrained: list[str] = []

    def counting(
        decoder: Any, data: Any, cfg: Any, device: Any, label: str, *a: Any, **k: Any
    ) -> Any:
        retrained.append(label)
        return real(decoder, data, cfg, device, label, *a, **k)

    monkeypatch.setattr(blackbox_module, "fit_decoder", counting)
    resumed = attack(trained, ["blackbox", "whitebox"], config=None, out=out, resume=True)
    assert trained_families[0] not in retrained and len(retrained) == 2
    for name in ("blackbox", "whitebox"):
        assert resumed["attacks"][name]["psnr"] == clean["attacks"][name]["psnr"]
        assert resumed["attacks"][name]["per_image"] == clean["attacks"][name]["per_image"]


def test_resume_with_other_settings_is_one_line_exit_2(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / PARTS_DIR).mkdir(parents=True)
    (out / PARTS_DIR / "fingerprint.json").write_text(json.dumps({"fingerprint": "other"}))
    result = CliRunner().invoke(
        app, ["attack", str(trained), "--attack", "blackbox", "--out", str(out), "--resume"]
    )
    assert result.exit_code == 2
    assert "another model, split, attack setting or data" in result.output
    assert result.output.count("\n") == 1


def test_progress_lines_and_an_estimate_without_a_terminal(trained: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "a.yaml"
    small = json.loads(json.dumps(CONFIG))
    small["blackbox"]["families"] = ["upsample"]
    cfg.write_text(json.dumps(small))
    result = CliRunner().invoke(
        app,
        ["attack", str(trained), "--attack", "blackbox", "--config", str(cfg)]
        + ["--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("estimate: about" in line and "blackbox/upsample" in line for line in lines)
    epoch_lines = [line for line in lines if "blackbox/upsample 1/4: val" in line]
    assert epoch_lines and "left" in epoch_lines[0]
    assert any("blackbox/upsample done" in line for line in lines)


def test_configs_of_old_runs_drop_the_whitebox_subset() -> None:
    """Resolved recipes from before every attack scored every image still load."""
    cfg = AttackConfig.model_validate({"whitebox": {"max_images": 32, "steps": 5}})
    assert cfg.whitebox.steps == 5 and "max_images" not in cfg.whitebox.model_dump()
