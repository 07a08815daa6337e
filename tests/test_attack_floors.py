"""The label-only floor under a mix-loss attacker (patrol_compress.attacks.floors)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from patrol_compress.attacks.data import build_attack_data, image_means
from patrol_compress.attacks.evaluate import attack_floor, floor_guesses
from patrol_compress.attacks.fit import reconstruction_loss
from patrol_compress.attacks.floors import label_templates
from patrol_compress.config.privacy import AttackConfig
from patrol_compress.data import build_data
from patrol_compress.data.base import Item
from patrol_compress.metrics.image import image_metrics

from .test_data_fashion_mnist import config, make_files


class Shapes(Dataset[Item]):
    """Two labels of bright squares at random offsets: their mean is a blur, not a square."""

    def __init__(self, n: int = 200) -> None:
        gen = torch.Generator().manual_seed(0)
        self.items: list[Item] = []
        for i in range(n):
            x = torch.zeros(1, 16, 16)
            r, c = (int(v) for v in torch.randint(0, 8, (2,), generator=gen))
            side = 6 if i % 2 else 4
            x[:, r : r + side, c : c + side] = 1.0
            self.items.append((x, i % 2, 0))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]


def test_mix_templates_fit_the_mix_loss_better_than_the_class_mean() -> None:
    data = Shapes()
    _, means = image_means(data)
    assert label_templates(data, means, "mse", 0) == means  # the mean is MSE's minimiser
    templates = label_templates(data, means, "mix", 0, steps=100)
    assert set(templates) == {0, 1}
    for label, template in templates.items():
        x = torch.stack([img for img, y, _ in data.items if y == label])
        fitted = reconstruction_loss(template.expand_as(x), x, "mix")
        mean = reconstruction_loss(means[label].expand_as(x), x, "mix")
        assert float(fitted) < float(mean) - 0.01
        assert float(template.min()) >= 0.0 and float(template.max()) <= 1.0


def test_a_mix_attacker_is_held_to_the_mix_fitted_label_floor(tmp_path: Path) -> None:
    bundle = build_data(config(make_files(tmp_path / "fm", n_train=24, n_test=10)))
    plain = build_attack_data(bundle, AttackConfig(max_eval_images=10))
    assert plain.label_only_mix is None and "label_only_mix" not in floor_guesses(plain)
    cfg = AttackConfig.model_validate({"max_eval_images": 10, "blackbox": {"loss": "mix"}})
    mix = build_attack_data(bundle, cfg)
    assert mix.label_only_mix is not None
    assert mix.label_only_mix.shape == mix.eval_images.shape
    assert torch.equal(mix.label_only, plain.label_only)
    guesses = floor_guesses(mix)
    assert set(guesses) == {"mean_image", "label_only", "label_only_mix"}
    floor = attack_floor(mix, 10)
    for guess in guesses.values():
        scores = image_metrics(mix.eval_images, guess)
        assert floor["ssim"] >= scores["ssim"] and floor["psnr"] >= scores["psnr"]
    assert mix.summary["label_only_mix_source"] is not None


def test_the_floor_script_writes_every_floor_of_a_mix_setting(tmp_path: Path) -> None:
    """benchmarks/label_floor.py: the floors of a run's data under an attack setting, with
    provenance, and no model loaded (the run folder holds only its recipe)."""
    import json

    import yaml

    from patrol_compress.recipe import dump_recipe, parse_recipe

    from .helpers import load_benchmark, tiny_recipe_dict

    recipe = tiny_recipe_dict(tmp_path)
    recipe["data"] = {
        "kind": "fashion-mnist",
        "root": str(make_files(tmp_path / "fm", n_train=24, n_test=10)),
        "image_size": 16,
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text(dump_recipe(parse_recipe(recipe)))
    setting = tmp_path / "mix.yaml"
    setting.write_text(yaml.safe_dump({"max_eval_images": 10, "blackbox": {"loss": "mix"}}))
    bench = load_benchmark("label_floor")
    args = ["--run", str(run), "--config", str(setting), "--name", "x", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    out = json.loads((tmp_path / "label_floor_x.json").read_text())
    assert set(out["floors"]) == {"mean_image", "label_only", "label_only_mix"}
    assert "provenance" in out
    assert "label_only_mix" in (tmp_path / "label_floor_x.md").read_text()
