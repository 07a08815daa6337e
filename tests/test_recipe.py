"""Recipes: every shipped file validates; bad ones give field-path errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from patrol_compress.cli.app import app
from patrol_compress.errors import RecipeError
from patrol_compress.recipe import (
    PatrolConfig,
    PatrolSettings,
    dump_recipe,
    load_recipe,
    parse_recipe,
    with_privacy_terms,
)

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.schema_version == 1


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("name: x\nbogus: 1\n", "bogus", "unknown key"),
        ("name: x\ntrain: {epochs: many}\n", "train.epochs", "integer"),
        ("name: x\ntrain: {epochs: 0}\n", "train.epochs", "greater than or equal to 1"),
        ("name: x\ndata: {kind: veri}\n", "data", "data.root is required"),
        ("name: x\nmodel: {arch: vgg}\n", "model.arch", "resnet18"),
        ("name: x\npatrol: {split: 2, budget: {fit_split: 3}}\n", "(recipe)", "shallower"),
        (
            "name: x\npatrol: {budget: {params: 5, bytes: 9}}\n",
            "patrol.budget",
            "at most one of fit_split, params, bytes",
        ),
        ("name: x\nschema_version: 7\n", "schema_version", "1"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, text))
    msg = str(info.value)
    assert field in msg and words in msg


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"malformed YAML at line 2, column 9"):
        load_recipe(_write(tmp_path, "name: x\ntrain: a: b\n"))


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="expected a YAML mapping"):
        load_recipe(_write(tmp_path, "- 1\n- 2\n"))


def test_validate_command_prints_one_line_per_problem(tmp_path: Path) -> None:
    bad = _write(tmp_path, "name: x\nbogus: 1\ntrain: {epochs: -1}\n")
    result = CliRunner().invoke(app, ["validate", str(bad), str(RECIPES[0])])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    problems = [line for line in lines if str(bad) in line]
    assert len(problems) == 2
    assert any("bogus: unknown key" in line for line in problems)
    assert any("train.epochs" in line and "found -1" in line for line in problems)
    assert any(line.endswith(": ok") for line in lines)


def test_attack_config_files_share_the_recipes_base_and_reader(tmp_path: Path) -> None:
    from patrol_compress.config.base import StrictModel
    from patrol_compress.privacy_config import AttackConfig, DefenseSweep, load_attack_config

    assert issubclass(AttackConfig, StrictModel) and issubclass(DefenseSweep, StrictModel)
    bad = tmp_path / "a.yaml"
    bad.write_text("whitebox: {tv_weight: .inf}\n")
    with pytest.raises(RecipeError, match=r"a\.yaml: whitebox\.tv_weight: .*finite"):
        load_attack_config(bad)
    lines = ["a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=r"a\.yaml: refused: the YAML expands to more than"):
        load_attack_config(bad)
    bad.write_text("")
    assert load_attack_config(bad) == AttackConfig()


@pytest.mark.parametrize(
    "name",
    ["quickstart", "fashion_mnist", "fashion_mnist_small", "veri_resnet18", "veriwild_resnet18"],
)
def test_shipped_recipes_default_to_the_best_measured_method(name: str) -> None:
    """Plain budget-steered pruning (README, "Does PATROL beat plain pruning?"); the paper's
    terms stay configured and one call (or enabled: true) turns them on."""
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / f"{name}.yaml")
    assert not recipe.patrol.lipschitz.enabled and not recipe.patrol.adversarial.enabled
    paper = with_privacy_terms(recipe)
    assert paper.patrol.lipschitz.enabled and paper.patrol.adversarial.enabled
    assert paper.patrol.lipschitz.alphas == recipe.patrol.lipschitz.alphas


@pytest.mark.parametrize(
    "budget", [{"params": 5000}, {"bytes": 20000, "macs": 10**6}, {"fit_split": 2, "fit": ["macs"]}]
)
def test_a_resolved_recipe_loads_again(budget: dict[str, object]) -> None:
    """recipe.resolved.yaml spells out every default (fit: [params], fit_fraction: 1.0), and
    export/attack read it back: a budget without fit_split must still load."""
    recipe = parse_recipe({"name": "r", "patrol": {"budget": budget}})
    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe


def test_the_method_settings_are_the_pruners_and_the_job_fields_the_recipes() -> None:
    """One model of the method's settings; the recipe's section extends it with the job's."""
    job = set(PatrolConfig.model_fields) - set(PatrolSettings.model_fields)
    assert job == {"enabled", "split", "epochs", "lr", "budget"} | {
        "recovery_epochs",
        "recovery_lr",
        "recovery_privacy",
        "recovery_distill",
    }
    section = load_recipe(Path("recipes/quickstart.yaml")).patrol
    settings = section.settings()
    assert type(settings) is PatrolSettings
    assert settings.model_dump() == section.model_dump(include=set(PatrolSettings.model_fields))
    # Defaults: a recipe that says nothing keeps the paper's terms; the pruner's are off.
    assert PatrolConfig().lipschitz.enabled and PatrolConfig().mask_lr == 1e-2
    assert not PatrolSettings().lipschitz.enabled and PatrolSettings().mask_lr is None
