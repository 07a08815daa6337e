"""The notebook API: recipes as objects, dicts or paths; str folders; the model back."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import patrol_compress
from patrol_compress import api
from patrol_compress.errors import ArtifactError, ModelError, PatrolError, RecipeError
from patrol_compress.metrics.flops import count_params
from patrol_compress.models.split import edge_modules

from .helpers import tiny_recipe_dict, write_recipe


def test_prune_takes_a_dict_and_str_out_and_load_model_gives_the_pruned_module(
    tmp_path: Path,
) -> None:
    data = tiny_recipe_dict(tmp_path, epochs=1, recovery_epochs=0)
    data["train"]["epochs"] = 1
    out = str(tmp_path / "notebook run")  # a str, as a notebook user types it
    metrics = api.prune(data, out=out, quiet=True)
    model = api.load_model(out)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert count_params(edge_modules(model, 4)) == metrics["edge"]["after"]["params"]
    assert metrics["edge"]["after"]["params"] <= metrics["budget"]["params"]
    edge, cloud = api.partitions(out)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cloud(edge(x)), model(x))
    assert api.run_folder(data, out) == Path(out)
    with pytest.raises(ArtifactError, match="no saved model"):
        api.load_model(tmp_path / "nothing here")


def test_train_takes_a_recipe_path_as_str(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path)
    data["train"]["epochs"] = 1
    path = write_recipe(tmp_path, data)
    metrics = api.train(str(path), out=str(tmp_path / "t"), quiet=True)
    assert "accuracy" in metrics
    model = api.load_model(tmp_path / "t")
    assert isinstance(model, torch.nn.Module)
    with pytest.raises(ModelError, match="pass split=K"):
        api.partitions(tmp_path / "t")
    edge, _ = api.partitions(tmp_path / "t", split=1)
    assert len(list(edge.children())) > 0


def test_recipe_in_any_form_or_a_clear_error(tmp_path: Path) -> None:
    data = tiny_recipe_dict(tmp_path)
    assert api.as_recipe(data) == api.as_recipe(write_recipe(tmp_path, data))
    assert api.as_recipe(api.as_recipe(data)).name == "tiny"
    with pytest.raises(RecipeError, match="patrol.split"):
        api.as_recipe({**data, "patrol": {"split": 0}})
    with pytest.raises(RecipeError, match="found int"):
        api.as_recipe(3)  # type: ignore[arg-type]


def test_every_job_is_in_api_and_the_package_and_documented_with_an_example() -> None:
    jobs = ["prune", "train", "export", "bench", "attack", "defend", "report", "load_model"]
    for name in ["prune", "export", "attack", "defend", "load_model", "partitions"]:
        # not train, report, bench: sub-packages of that name win once imported
        assert getattr(patrol_compress, name) is getattr(api, name)
    public = [
        (name, obj)
        for name, obj in vars(api).items()
        if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == api.__name__
    ]
    assert {n for n, _ in public} >= set(jobs)
    for name, fn in public:
        assert fn.__doc__ and "Example::" in fn.__doc__, f"api.{name} has no example"


def test_report_takes_str_paths_and_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PatrolError):
        api.report(str(tmp_path), out=str(tmp_path / "r.html"))
    with pytest.raises(ArtifactError, match="no attack.json"):
        api.report([])
