"""The leakage-aware ranking of the crossing channels (``patrol.uplink.rank: leakage``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from patrol_compress.cli.app import app
from patrol_compress.pruning.budget import EdgeBudget, UplinkLimit, ranking_scores, uplink_plan
from patrol_compress.pruning.structure import ChannelStructure
from patrol_compress.uplink import leakage

from .helpers import tiny_resnet, write_recipe
from .test_uplink import BITS, CHANNELS_ALLOWED, POSITIONS, prune_on_one_thread, uplink_recipe


@pytest.fixture(autouse=True)
def short_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short probe fit keeps these tests in seconds; the order they check does not need
    a converged decoder (the frontier runs the module's own settings)."""
    monkeypatch.setattr(leakage, "PROBE_STEPS", 60)


def smooth_images(n: int) -> torch.Tensor:
    """Images with content a 2x2 feature map can carry: upsampled 4x4 noise."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")


def test_a_channel_the_cloud_ignores_weighs_most_and_is_removed_first() -> None:
    """The cloud (the re-id head's neck) is made blind to the crossing channel that varies
    most: its task use reads exactly 0, a decoder still reads the image from it, so the
    ranking removes it before any other; with the plain mask ranking it would be kept (the
    masks are equal at the start, and the weight-magnitude tie-break keeps wide channels)."""
    torch.manual_seed(0)
    model = tiny_resnet()
    images = smooth_images(256)
    from patrol_compress.models.split import split as split_model

    with torch.no_grad():
        z = split_model(model, 4)[0](images)
        blind = int(z.std(dim=(0, 2, 3)).argmax())
        model.head.neck.weight[blind] = 0.0
        model.head.neck.bias[blind] = 0.0
    structure = ChannelStructure(model, 4, 1.0, images[:2])
    rank = structure.rank_by_leakage(images, seed=0)
    (stream,) = structure.crossing.groups
    record = {int(c["channel"]): c for c in rank.channels}
    assert len(record) == z.shape[1]  # every crossing channel, once
    assert record[blind]["task"] == 0.0 and float(record[blind]["leak_mse"]) > 0.0
    weights = rank.weights[stream]
    assert int(weights.argmax()) == blind
    # Weights are relative: their geometric mean over the crossing channels is 1.
    assert math.exp(float(weights.log().mean())) == pytest.approx(1.0, rel=1e-4)
    others = [w for g, w in enumerate(rank.weights) if g != stream]
    assert all(torch.equal(w, torch.ones_like(w)) for w in others)
    # The uplink limit's plan with one channel too many removes exactly the blind one.
    width = len(weights)
    limit = UplinkLimit(BITS * POSITIONS * (width - 1), BITS, POSITIONS)
    scores = ranking_scores(structure.mg)
    ranked = [s / w for s, w in zip(scores, rank.weights, strict=True)]
    plan = uplink_plan(ranked, structure.crossing, limit, round_to=1)
    assert plan is not None and plan[stream] == [blind]
    plain = uplink_plan(scores, structure.crossing, limit, round_to=1)
    assert plain is not None and plain[stream] != [blind]
    # The structure's own plan (what steering and removal use) reads the same weights.
    assert structure.plan(EdgeBudget(uplink=limit), tau=0.0).plan[stream] == [blind]


def test_the_threshold_ranks_the_crossing_channels_by_the_same_weights() -> None:
    """With a parameter limit as well, the crossing channels removed are the lowest by
    mask / weight, whichever limit removed them: the global threshold reads the same
    weighted scores as the uplink limit (reading the masks alone, it cut low-masked
    crossing channels the leakage plan kept: 8 kept under a 12-channel limit, measured)."""
    from patrol_compress.pruning.budget import estimate_cost, plan_for_budget
    from patrol_compress.pruning.masks import ChannelMask

    structure = ChannelStructure(tiny_resnet(), 4, 1.0, smooth_images(2))
    (stream,) = structure.crossing.groups
    g = torch.Generator().manual_seed(3)
    width = len(structure.mg.groups[stream][0].idxs)
    crossing = {
        id(item.dep.target.module)
        for item in structure.mg.groups[stream]
        if isinstance(item.dep.target.module, ChannelMask)
    }
    with torch.no_grad():  # masks that differ, the crossing ones lowest: the threshold's first
        for m in structure.model.modules():
            if isinstance(m, ChannelMask):
                base = 0.1 if id(m) in crossing else 1.0
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + base)
    weights = [torch.ones(len(grp[0].idxs)) for grp in structure.mg.groups]
    spread = torch.exp(torch.linspace(-2.0, 2.0, width))
    weights[stream] = spread[torch.randperm(width, generator=g)]
    none: list[list[int]] = [[] for _ in structure.mg.groups]
    full = estimate_cost(structure.model, 4, structure.mg, none, structure.spatial).params
    limit = UplinkLimit(BITS * POSITIONS * (width // 2), BITS, POSITIONS)
    result = plan_for_budget(
        structure.model,
        4,
        structure.mg,
        EdgeBudget(params=int(full * 0.3), uplink=limit),
        0.0,
        structure.spatial,
        crossing=structure.crossing,
        crossing_weights=weights,
    )
    ranked = ranking_scores(structure.mg)[stream] / weights[stream]
    removed = set(result.plan[stream])
    kept = [i for i in range(width) if i not in removed]
    assert kept and len(kept) <= width // 2
    assert max(float(ranked[i]) for i in removed) <= min(float(ranked[i]) for i in kept)


def test_the_recipe_prunes_the_crossing_channels_by_leakage_and_records_why(
    tmp_path: Path,
) -> None:
    data = uplink_recipe(tmp_path)
    data["patrol"]["uplink"]["rank"] = "leakage"
    prune_on_one_thread(data)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    channels = metrics["edge"]["after"]["output_shape"][0]
    assert channels <= CHANNELS_ALLOWED
    summary = json.loads((run / "patrol" / "summary.json").read_text())
    ranking = summary["crossing_leakage"]
    crossing = metrics["edge"]["before"]["output_shape"][0]
    assert len(ranking["channels"]) == crossing
    assert {"leak_mse", "task", "weight"} <= set(ranking["channels"][0])


def test_a_resumed_run_measures_the_same_ranking(tmp_path: Path) -> None:
    """The ranking is measured before the stage loads anything, from the target and the
    seed alone: the same recipe measures the same weights again (resume relies on it)."""
    from patrol_compress.config import load_recipe
    from patrol_compress.data import build_data
    from patrol_compress.models import build_model
    from patrol_compress.pipeline import training_pruner

    data = uplink_recipe(tmp_path)
    data["patrol"]["uplink"]["rank"] = "leakage"
    recipe = load_recipe(write_recipe(tmp_path, data))
    bundle = build_data(recipe.data)
    torch.manual_seed(0)
    target = build_model(recipe.model, num_classes=bundle.num_classes)

    def weights() -> list[Any]:
        pruner = training_pruner(recipe, bundle, target, None)
        record = pruner.crossing_leakage()
        assert record is not None
        return [c["weight"] for c in record["channels"]]  # type: ignore[index, union-attr]

    torch.manual_seed(123)  # whatever ran before must not matter
    first = weights()
    torch.manual_seed(456)
    assert weights() == first


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        (
            {"budget": {"fit_split": 2}, "uplink": {"bits": BITS, "rank": "leakage"}},
            "patrol.uplink.rank: leakage ranks the crossing channels an uplink budget removes",
        ),
        (
            {"uplink": {"bits": BITS, "rank": "decoder"}},
            "patrol.uplink.rank",
        ),
    ],
)
def test_a_leakage_ranking_without_an_uplink_budget_is_one_line(
    tmp_path: Path, patch: dict[str, Any], words: str
) -> None:
    data = uplink_recipe(tmp_path)
    data["patrol"].update(patch)
    result = CliRunner().invoke(app, ["prune", str(write_recipe(tmp_path, data))])
    assert result.exit_code == 2, result.output
    assert words in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "run").exists()


def test_the_library_door_asks_for_the_measure_before_the_first_epoch() -> None:
    from patrol_compress import PatrolPruner
    from patrol_compress.errors import UsageError

    pruner = PatrolPruner(
        tiny_resnet(),
        torch.rand(2, 3, 32, 32),
        split=4,
        budget={"uplink_bits": BITS * POSITIONS * CHANNELS_ALLOWED},
        total_steps=4,
        config={"uplink": {"bits": BITS, "rank": "leakage"}},
    )
    with pytest.raises(UsageError, match="rank_crossing"):
        pruner.begin_epoch()
    pruner.rank_crossing(smooth_images(64))
    pruner.begin_epoch()  # measured: the plan now uses it
