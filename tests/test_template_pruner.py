"""One PATROL engine, several front doors, one test body (NNCF's template tests).

The reference is the recipe path (``api.prune``). Every other way in to the
engine is a :class:`FrontDoor` subclass that starts from the same trained
target with the same seed, and the one body in :class:`PatrolTemplate` demands
what the recipe got, exactly (tolerance 0, one thread): the masks after PATROL
fine-tuning, the removal (the same channels, the same equivalence check) and
every weight after the recovery fine-tune. The hand loop is what a user writes
around :class:`~patrol_compress.PatrolPruner` with the recipe's own data and
loss helpers; nothing in it calls ``patrol_finetune``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from patrol_compress import PatrolPruner, api
from patrol_compress.data import build_data
from patrol_compress.io import read_json
from patrol_compress.models import BlockNet
from patrol_compress.models.saved import load_run_model
from patrol_compress.pruning.budget import resolve_budget
from patrol_compress.pruning.patrol import (
    PatrolParts,
    StageSettings,
    make_surrogate,
    patrol_finetune,
)
from patrol_compress.pruning.structure import make_structure
from patrol_compress.pruning.surrogate import build_surrogate
from patrol_compress.recipe import Recipe, parse_recipe
from patrol_compress.train.loop import set_lr
from patrol_compress.train.target import (
    loss_from_outputs,
    make_loader,
    set_epoch,
    steps_per_epoch,
    training_outputs,
)

from .helpers import tiny_recipe_dict

# Both privacy terms on, the surrogate refitted every epoch, a budget to steer into,
# and a recovery that keeps the terms: every part of the engine runs.
PATROL: dict[str, Any] = {
    "epochs": 2,
    "recovery_epochs": 1,
    "adversarial": {"enabled": True, "adversary_every": 1, "adversary_width": 16},
}


@dataclass
class Result:
    masked: dict[str, torch.Tensor]  # every weight and mask after PATROL fine-tuning
    removal: dict[str, Any]
    final: dict[str, torch.Tensor]  # every weight after recovery


class FrontDoor(ABC):
    """One way in to the engine: from the recipe run's trained target to a Result."""

    @abstractmethod
    def run(self, recipe: Recipe, reference: Path) -> Result: ...


def _example(recipe: Recipe, shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(recipe.seed))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class HandLoop(FrontDoor):
    """A user's loop on PatrolPruner: begin_epoch, pruner(x), backward, step; prune; recover."""

    def run(self, recipe: Recipe, reference: Path) -> Result:
        cfg, tcfg = recipe.patrol, recipe.train
        data = build_data(recipe.data)
        shape = (data.channels, data.image_size, data.image_size)
        target, _ = load_run_model(reference / "target")
        model = copy.deepcopy(target)
        torch.manual_seed(recipe.seed + 2)
        surrogate = build_surrogate(model, cfg.split, shape, cfg.adversarial.adversary_width)
        pruner = PatrolPruner(
            model,
            _example(recipe, shape),
            split=cfg.split,
            budget={"fit_split": 2},
            total_steps=cfg.epochs * steps_per_epoch(data, tcfg),
            config=cfg.settings(),
            surrogate=surrogate,
        )
        self._train(pruner, data, recipe, cfg.epochs, cfg.lr)
        pruner.finalize()
        masked = _state(model)
        pruner.prune()
        assert pruner.removal is not None
        torch.manual_seed(recipe.seed + 4)  # the recovery's own seed, as each stage has
        self._train(pruner, data, recipe, cfg.recovery_epochs, cfg.recovery_lr or tcfg.lr)
        return Result(masked, pruner.removal.as_dict(), _state(model))

    @staticmethod
    def _train(pruner: PatrolPruner, data: Any, recipe: Recipe, epochs: int, lr: float) -> None:
        tcfg = recipe.train
        loader = make_loader(data, tcfg, recipe.seed + 1)
        steps = len(loader)
        opt = torch.optim.Adam(pruner.weights(), lr=lr, weight_decay=tcfg.weight_decay)
        for epoch in range(epochs):
            pruner.begin_epoch(loader)
            pruner.model.train()
            set_epoch(loader, epoch)
            for i, (x, pids, _) in enumerate(loader):
                set_lr(opt, lr, epoch + i / steps, 0, epochs)
                out, privacy = pruner(x)
                logits, feat = training_outputs(out)
                loss, _ = loss_from_outputs(logits, feat, pids, tcfg, data.task)
                opt.zero_grad(set_to_none=True)
                pruner.backward(loss + privacy)
                opt.step()
                pruner.step()


class AdoptedParts(FrontDoor):
    """The older door: masks inserted by make_structure, handed to patrol_finetune."""

    def run(self, recipe: Recipe, reference: Path) -> Result:
        cfg = recipe.patrol
        data = build_data(recipe.data)
        shape = (data.channels, data.image_size, data.image_size)
        target, _ = load_run_model(reference / "target")
        model: BlockNet = copy.deepcopy(target)
        torch.manual_seed(recipe.seed + 2)
        surrogate = make_surrogate(model, recipe, data)
        example = _example(recipe, shape)
        structure = make_structure(
            cfg.granularity, model, cfg.split, cfg.mask_init, example, cfg.round_to, cfg.rank
        )
        assert cfg.budget is not None
        budget = resolve_budget(cfg.budget, target, shape)
        folder = reference.parent / "adopted"
        parts = PatrolParts(model, structure, surrogate)
        patrol_finetune(parts, data, recipe, folder / "patrol", budget, False, True)
        masked = _state(model)
        model.eval()
        removal = structure.remove(budget, cfg.tau, example)
        torch.manual_seed(recipe.seed + 4)
        surrogate = make_surrogate(model, recipe, data)
        lr = cfg.recovery_lr or recipe.train.lr
        settings = StageSettings("recover", cfg.recovery_epochs, lr)
        parts = PatrolParts(model, None, surrogate)
        patrol_finetune(parts, data, recipe, folder / "recover", None, False, True, settings)
        return Result(masked, removal.as_dict(), _state(model))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, Path]:
    """The recipe path, once: its run folder holds the target every door starts from."""
    root = tmp_path_factory.mktemp("template")
    recipe = parse_recipe(tiny_recipe_dict(root, **PATROL))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    try:
        api.prune(recipe, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return recipe, root / "run"


class PatrolTemplate:
    """The one test body; each subclass names a front door."""

    door: FrontDoor

    def test_same_seed_same_masks_removal_and_weights(self, reference: tuple[Recipe, Path]) -> None:
        recipe, run = reference
        got = self.door.run(recipe, run)
        masked = load_file(str(run / "patrol" / "masked.safetensors"))
        assert set(got.masked) == set(masked)
        assert any(k.endswith("mask.weight") for k in masked)
        for k, v in masked.items():
            assert torch.equal(got.masked[k], v), k
        assert got.removal == read_json(run / "metrics.json")["removal"]
        final = load_file(str(run / "model.safetensors"))
        assert set(got.final) == set(final)
        for k, v in final.items():
            assert torch.equal(got.final[k], v), k


class TestHandLoop(PatrolTemplate):
    door = HandLoop()


class TestAdoptedParts(PatrolTemplate):
    door = AdoptedParts()
