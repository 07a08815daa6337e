"""Distillation recovery (``patrol.recovery_distill``, ``PatrolPruner.distill_loss``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from patrol_compress import PatrolPruner
from patrol_compress.cli.app import app
from patrol_compress.errors import ArtifactError, RecipeError
from patrol_compress.io import sha256_file
from patrol_compress.pipeline import DISTILL_STAGE, distill_teacher, prune
from patrol_compress.pruning.distill import crossing_loss, embedding_loss, kd_logit_loss
from patrol_compress.recipe import dump_recipe, parse_recipe
from patrol_compress.run import save_run_model
from patrol_compress.rundir import RunDir
from patrol_compress.testing.cnns import vgg11_bn

from .helpers import tiny_model_info, tiny_recipe, tiny_recipe_dict, tiny_resnet, write_recipe

ALL_TERMS = {"feature_weight": 1.0, "feature_at": ["crossing", "embedding"]}


def _distill(tmp_path: Path, **distill: Any) -> dict[str, Any]:
    data = tiny_recipe_dict(tmp_path)
    data["patrol"]["recovery_distill"] = {"enabled": True, **distill}
    return data


# ---------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize(
    ("distill", "field"),
    [
        ({"temperature": 0}, "patrol.recovery_distill.temperature"),
        ({"temperature": -2.0}, "patrol.recovery_distill.temperature"),
        ({"feature_at": ["logits"]}, "patrol.recovery_distill.feature_at"),
        ({"feature_at": "head"}, "patrol.recovery_distill.feature_at"),
        ({"logit_weight": -1}, "patrol.recovery_distill.logit_weight"),
        ({"logit_weight": 0, "feature_weight": 0}, "patrol.recovery_distill"),
        ({"feature_at": ["crossing", "crossing"]}, "patrol.recovery_distill"),
        ({"teacher_path": "x"}, "patrol.recovery_distill.teacher_path"),
    ],
)
def test_bad_settings_are_one_line_naming_the_field(
    tmp_path: Path, distill: dict[str, Any], field: str
) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(_distill(tmp_path, **distill), "r.yaml")
    message = str(err.value)
    assert "\n" not in message and f"r.yaml: {field}" in message


def test_bad_settings_exit_2_from_the_cli(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, _distill(tmp_path, temperature=0))
    result = CliRunner().invoke(app, ["prune", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "recovery_distill.temperature" in result.output
    assert not (tmp_path / "out").exists()


def test_off_by_default_and_left_out_of_a_resolved_recipe(tmp_path: Path) -> None:
    """Existing recipes load unchanged and resolve byte for byte as before (resumable)."""
    recipe = tiny_recipe(tmp_path)
    assert not recipe.patrol.recovery_distill.enabled
    assert "recovery_distill" not in dump_recipe(recipe)
    on = parse_recipe(_distill(tmp_path, feature_at="embedding", feature_weight=0.5))
    assert on.patrol.recovery_distill.feature_at == ["embedding"]
    text = dump_recipe(on)
    assert "recovery_distill" in text
    assert parse_recipe(yaml.safe_load(text)) == on


# ------------------------------------------------------------------------------ the loss


def test_loss_terms_are_zero_for_equal_inputs_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 10, generator=g)
    assert float(kd_logit_loss(s, s.clone(), 4.0)) == 0.0
    assert float(kd_logit_loss(s, torch.randn(4, 10, generator=g), 4.0)) > 0
    z = torch.rand(4, 16, 5, 5, generator=g)
    assert float(crossing_loss(z, z.clone())) == pytest.approx(0.0, abs=1e-7)
    # Channel-agnostic: a pruned student (fewer channels) is compared all the same.
    assert float(crossing_loss(z[:, :6], z)) > 0
    e = torch.randn(4, 8, generator=g)
    assert float(embedding_loss(e, e.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(e[:, :5], e)) > 0


def _pruner(student: torch.nn.Module, **settings: Any) -> tuple[PatrolPruner, torch.nn.Module]:
    teacher = copy.deepcopy(student)
    pruner = PatrolPruner.for_recovery(student, torch.rand(2, 3, 32, 32), split=2)
    pruner.distill_from(teacher, settings)
    return pruner, teacher


@pytest.mark.parametrize("task", ["reid", "classification"])
def test_distill_loss_is_zero_when_the_student_is_the_teacher(task: str) -> None:
    student = tiny_resnet()
    student.head.task = task
    pruner, _ = _pruner(student, **ALL_TERMS)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        loss = pruner.distill_loss(x, student(x))  # eval mode: re-id returns the embedding
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert set(pruner.last_terms) >= {"kd", "kd_crossing", "kd_embedding"}
    with torch.no_grad():
        student.head.classifier.weight.add_(0.5 * torch.randn_like(student.head.classifier.weight))
        logit = pruner.distill_loss(x, student(x))
        assert float(logit) > 0 and pruner.last_terms["kd"] > 0
        student.layer2[0].conv1.weight.mul_(-1.0)
        pruner.distill_loss(x, student(x))
    assert pruner.last_terms["kd_crossing"] > 0 and pruner.last_terms["kd_embedding"] > 0


def test_distill_loss_has_a_gradient_to_the_student_only() -> None:
    student = tiny_resnet()
    pruner, teacher = _pruner(student, **ALL_TERMS)
    with torch.no_grad():
        student.layer1[0].conv1.weight.mul_(0.5)  # a student unlike its teacher
    student.train()
    x = torch.rand(6, 3, 32, 32)
    out = student(x)  # training mode: (logits, feature)
    loss = pruner.distill_loss(x, out)
    assert loss.requires_grad
    loss.backward()
    edge_grad = student.layer1[0].conv1.weight.grad
    assert edge_grad is not None and float(edge_grad.abs().sum()) > 0
    assert student.head.classifier.weight.grad is not None
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    pruner.close()  # the hooks go with the pruner


def test_distill_loss_needs_a_teacher() -> None:
    pruner = PatrolPruner.for_recovery(tiny_resnet(), torch.rand(2, 3, 32, 32), split=2)
    with pytest.raises(Exception, match="distill_from"):
        pruner.distill_loss(torch.rand(2, 3, 32, 32), torch.rand(2, 10))


# ---------------------------------------------------------------------------- the recipe


def test_tiny_prune_with_distillation_records_the_teacher(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tmp_path,
        epochs=1,
        recovery_epochs=1,
        recovery_distill={"enabled": True, "during_masks": True, **ALL_TERMS},
    )
    metrics = prune(recipe, quiet=True)
    run = tmp_path / "run"
    digest = sha256_file(run / "target" / "model.safetensors")
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["distill"] == metrics["distill"]
    assert on_disk["distill"]["teacher_sha256"] == digest
    assert on_disk["distill"]["teacher"] == "target/model.safetensors"
    stages = json.loads((run / "stages.json").read_text())
    assert stages[DISTILL_STAGE]["teacher_sha256"] == digest
    assert {"patrol", "recover", "evaluate"} <= set(stages)
    # during_masks: the PATROL stage's history carries the terms.
    history = json.loads((run / "patrol" / "summary.json").read_text())["history"]
    assert {"kd", "kd_crossing", "kd_embedding"} <= set(history[0])


def test_a_resume_with_another_teacher_is_refused(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, recovery_distill={"enabled": True})
    run = RunDir(tmp_path / "run")
    target = tiny_resnet()
    save_run_model(run / "target", target, tiny_model_info())
    _, record = distill_teacher(recipe, None, run, target)
    assert run.stages[DISTILL_STAGE]["teacher_sha256"] == record["teacher_sha256"]
    distill_teacher(recipe, None, run, target)  # same: fine
    with torch.no_grad():
        target.conv1.weight.mul_(2.0)
    save_run_model(run / "target", target, tiny_model_info())
    with pytest.raises(ArtifactError, match="another|other|sha256") as err:
        distill_teacher(recipe, None, run, target)
    assert "\n" not in str(err.value)


def test_a_missing_teacher_file_fails_before_training(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tmp_path, recovery_distill={"enabled": True, "teacher": str(tmp_path / "none.pt")}
    )
    with pytest.raises(RecipeError) as err:
        prune(recipe, quiet=True)
    message = str(err.value)
    assert "\n" not in message
    assert "patrol.recovery_distill.teacher" in message and "not found" in message
    assert not (tmp_path / "run").exists()


def test_any_model_takes_the_logit_term_and_the_feature_terms_need_a_blocknet() -> None:
    """A CNN with its own forward (traced split): logits alone; feature terms are one line."""
    net = vgg11_bn().eval()
    teacher = copy.deepcopy(net)
    x = torch.rand(4, 3, 32, 32)
    pruner = PatrolPruner.for_recovery(net, x[:2], split="features.6")
    pruner.distill_from(teacher)
    with torch.no_grad():
        assert float(pruner.distill_loss(x, net(x))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(Exception, match="feature_weight 0") as err:
        pruner.distill_from(teacher, ALL_TERMS)
    assert "\n" not in str(err.value)


def test_recovery_without_privacy_terms_distils_through_a_recovery_pruner(tmp_path: Path) -> None:
    """recovery_privacy false: the plain fine-tune's loss, plus the distillation terms."""
    recipe = tiny_recipe(
        tmp_path,
        epochs=1,
        recovery_epochs=1,
        recovery_privacy=False,
        recovery_distill={"enabled": True, "feature_weight": 1.0},
    )
    prune(recipe, quiet=True)
    last = json.loads((tmp_path / "run" / "checkpoints" / "recover" / "last.json").read_text())
    (epoch,) = last["info"]["history"]
    assert {"kd", "kd_crossing", "ce"} <= set(epoch) and "adv" not in epoch
    assert "kd_embedding" not in epoch  # feature_at: [crossing] by default


class _NotATensor:
    """Pickled into a torch file: loading it would run code, so it must be refused."""


def test_a_teacher_file_is_read_without_unpickling_and_hashed(tmp_path: Path) -> None:
    from patrol_compress.data import build_data
    from patrol_compress.pipeline import fresh_model

    recipe = tiny_recipe(tmp_path, epochs=0, recovery_epochs=1)
    teacher = fresh_model(recipe, build_data(recipe.data))
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _NotATensor()}, evil)
    bad = tiny_recipe(tmp_path, recovery_distill={"enabled": True, "teacher": str(evil)})
    with pytest.raises(Exception, match="patrol.recovery_distill.teacher") as err:
        prune(bad, quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()

    good = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), good)
    recipe = tiny_recipe(
        tmp_path,
        epochs=0,
        recovery_epochs=1,
        recovery_distill={"enabled": True, "teacher": str(good)},
    )
    metrics = prune(recipe, quiet=True)
    assert metrics["distill"]["teacher_sha256"] == sha256_file(good)
    assert metrics["distill"]["teacher"] == str(good)
