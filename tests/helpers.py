"""Tiny recipes for end-to-end tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

from patrol_compress.models import BlockNet, build_model
from patrol_compress.recipe import BlocksConfig, ModelConfig, Recipe, parse_recipe
from patrol_compress.testing.tiny import randomize_bn

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name``: the scripts are not a package.

    Registered in ``sys.modules`` so that dataclasses and pickling inside the
    script can find their module.
    """
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_resnet() -> BlockNet:
    """A width-1/8 ResNet-18 in eval mode with non-trivial BN statistics."""
    model = build_model(ModelConfig(width=0.125, stem="small"), num_classes=10)
    randomize_bn(model)
    return model.eval()


def tiny_mobilenet_net() -> BlockNet:
    """The MobileNetV2-style test CNN plugged in through ``model.factory`` (eval mode)."""
    cfg = ModelConfig(
        arch="custom",
        factory="patrol_compress.testing.tiny:tiny_mobilenet",
        blocks=BlocksConfig(
            stem=["stem_conv", "stem_bn", "stem_act"], stages=[["s1"], ["s2"], ["s3"]]
        ),
    )
    model = build_model(cfg, 6, image_size=32).eval()
    randomize_bn(model)
    return model


def tiny_model_info(**extra: Any) -> dict[str, Any]:
    """The model description ``save_run_model`` needs for :func:`tiny_resnet`."""
    return {
        "model": ModelConfig(width=0.125, stem="small").model_dump(mode="json"),
        "num_classes": 10,
        "in_channels": 3,
        "task": "reid",
        "image_size": 32,
        **extra,
    }


def tiny_recipe_dict(tmp_path: Path, **patrol: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "split": 4,
        "epochs": 2,
        "mask_lr": 0.005,
        "budget": {"fit_split": 2},
        "recovery_epochs": 1,
        "lipschitz": {"enabled": True, "alphas": [0.5, 0.1, 0.01, 0.005], "sigma": 0.1},
        "adversarial": {"enabled": True, "adversary_every": 1, "adversary_width": 16},
    }
    p.update(patrol)
    return {
        "schema_version": 1,
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "kind": "synthetic-vehicles",
            "image_size": 32,
            "num_identities": 12,
            "num_cameras": 3,
            "images_per_camera": 2,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"arch": "resnet18", "width": 0.125, "stem": "small"},
        "train": {"epochs": 2, "identities_per_batch": 4, "instances_per_identity": 2, "lr": 0.003},
        "patrol": p,
    }


def tiny_recipe(tmp_path: Path, **patrol: Any) -> Recipe:
    return parse_recipe(tiny_recipe_dict(tmp_path, **patrol))


def write_recipe(tmp_path: Path, data: dict[str, Any], name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def shape_images(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy RGB images of one of four shapes (square, ring, bars) at a random place,
    size and colour, and their classes: a task tiny CNNs learn in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.25 * torch.rand(n, 3, size, size, generator=g)
    for i, k in enumerate(y.tolist()):
        s = int(torch.randint(size // 4, size // 4 + 6, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=g)
        patch = torch.zeros(s, s)
        if k == 0:
            patch[:, :] = 1
        elif k == 1:
            patch[:, :] = 1
            patch[2:-2, 2:-2] = 0
        elif k == 2:
            patch[s // 2 - 2 : s // 2 + 2, :] = 1
        else:
            patch[:, s // 2 - 2 : s // 2 + 2] = 1
        x[i, :, r : r + s, c : c + s] = torch.maximum(x[i, :, r : r + s, c : c + s], colour * patch)
    return x, y


@torch.no_grad()
def calibrate_bn(model: torch.nn.Module, images: torch.Tensor) -> None:
    """BN statistics of the data, as a trained net has; random ones make ReLUs drop most input."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    model(images)
    model.eval()


def tiny_attack_run(
    root: Path, size: int = 32, split: int = 1, attack: dict[str, Any] | None = None
) -> Path:
    """An unpruned width-0.125 ResNet run (BN calibrated) with its resolved recipe."""
    from patrol_compress.data import build_data
    from patrol_compress.models.saved import save_run_model
    from patrol_compress.recipe import dump_recipe

    data = tiny_recipe_dict(root)
    data["data"].update(
        {"num_identities": 16, "num_cameras": 3, "images_per_camera": 2, "image_size": size}
    )
    if attack is not None:
        data["attack"] = attack
    recipe = parse_recipe(data)
    bundle = build_data(recipe.data)
    torch.manual_seed(0)
    model = build_model(recipe.model, bundle.num_classes, 3, "reid", size)
    calibrate_bn(model, torch.stack([bundle.train[i][0] for i in range(len(bundle.train))]))
    run = root / "run"
    info = {
        "model": recipe.model.model_dump(mode="json"),
        "num_classes": bundle.num_classes,
        "in_channels": 3,
        "task": "reid",
        "image_size": size,
        "split": split,
    }
    save_run_model(run, model.eval(), info)
    (run / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
    return run
