"""One entry point per job; the CLI commands are thin wrappers around these.

Every function takes what a notebook has at hand: a recipe as a
:class:`~patrol_compress.recipe.Recipe`, a plain dict or a YAML path, and
folders as ``str`` or :class:`~pathlib.Path`. Jobs write a run folder and
return its numbers; :func:`load_model` hands back the network a job saved::

    from patrol_compress import api

    metrics = api.prune("recipes/quickstart.yaml", out="runs/quick")
    model = api.load_model("runs/quick")          # the pruned nn.Module (eval mode)
    edge, cloud = api.partitions("runs/quick")    # its edge and cloud at the run's split

For your own model and training loop use :class:`patrol_compress.PatrolPruner` (the same
engine :func:`prune` drives).

Heavy modules (torch, the data loaders, the exporters) are imported inside each
function so that ``import patrol_compress`` stays cheap and torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patrol_compress.contracts import ATTACK_FILE, DEFENSES_DIR
from patrol_compress.errors import RecipeError
from patrol_compress.recipe import Recipe, load_recipe, parse_recipe

if TYPE_CHECKING:
    from patrol_compress.models import BlockNet
    from patrol_compress.report.build import ReportFiles

RecipeLike = Recipe | Mapping[str, Any] | str | Path
"""A validated recipe, a dict with the YAML's structure, or a YAML file's path."""


def as_recipe(recipe: RecipeLike) -> Recipe:
    """The :class:`Recipe` ``recipe`` stands for (validated; a problem is a RecipeError).

    Example::

        r = api.as_recipe({"name": "demo", "patrol": {"split": 2}})
        r = api.as_recipe("recipes/quickstart.yaml")
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return parse_recipe(dict(recipe), "<dict>")
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    raise RecipeError(
        f"expected a Recipe, a dict or the path of a recipe YAML, found {type(recipe).__name__}"
    )


def _path(folder: Path | str | None) -> Path | None:
    return None if folder is None else Path(folder)


def prune(
    recipe: RecipeLike,
    out: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """Target -> PATROL fine-tuning -> removal -> recovery -> evaluation; returns metrics.

    The run folder is ``out``, else the recipe's ``output_dir``, else
    ``runs/<name>``; :func:`load_model` on it gives the pruned network.

    Example::

        metrics = api.prune("recipes/quickstart.yaml", out="runs/quick", quiet=True)
        print(metrics["accuracy"]["after"], metrics["edge"]["after"]["params"])
        model = api.load_model("runs/quick")
    """
    from patrol_compress.pipeline import prune as run_prune

    return run_prune(as_recipe(recipe), _path(out), resume, force, quiet, keep_checkpoints)


def train(
    recipe: RecipeLike,
    out: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """Train (or load) and evaluate the target model only; returns its metrics.

    Example::

        metrics = api.train({"name": "t", "train": {"epochs": 2}}, out="runs/t")
        model = api.load_model("runs/t")   # the trained, unpruned network
    """
    from patrol_compress.pipeline import train_only

    return train_only(as_recipe(recipe), _path(out), resume, force, quiet, keep_checkpoints)


def run_folder(recipe: RecipeLike, out: Path | str | None = None) -> Path:
    """Where :func:`prune`/:func:`train` write for ``recipe`` and ``out``.

    Example::

        model = api.load_model(api.run_folder("recipes/quickstart.yaml"))
    """
    return as_recipe(recipe).run_dir(_path(out))


def load_model(run_dir: Path | str) -> BlockNet:
    """The network a finished ``prune`` or ``train`` saved in ``run_dir`` (eval mode, CPU).

    The weights are checked against their recorded sha256 and loaded without
    unpickling anything.

    Example::

        api.prune("recipes/quickstart.yaml", out="runs/quick")
        model = api.load_model("runs/quick")
        logits_or_embedding = model(images)
    """
    from patrol_compress.run import load_run_model

    return load_run_model(Path(run_dir))[0]


def partitions(run_dir: Path | str, split: int | None = None) -> tuple[BlockNet, BlockNet]:
    """The edge and cloud partitions of a run's model (``cloud(edge(x)) == model(x)``).

    ``split`` defaults to the split the run saved (its recipe's ``patrol.split``).

    Example::

        edge, cloud = api.partitions("runs/quick")
        features = edge(images)          # what the device sends
        output = cloud(features)
    """
    from patrol_compress.models.split import split as split_model
    from patrol_compress.run import load_run_model

    model, meta = load_run_model(Path(run_dir))
    k = split if split is not None else meta.get("split")
    if not isinstance(k, int):
        from patrol_compress.errors import ModelError

        raise ModelError(f"{run_dir}: the saved model records no split; pass split=K")
    return split_model(model, k)


def export(
    run_dir: Path | str,
    split: int,
    target: str = "onnx",
    precision: str = "fp32",
    out: Path | str | None = None,
    force: bool = False,
    calibration_images: int = 300,
    allow_parity_fail: bool = False,
) -> dict[str, Any]:
    """Export the run's model as edge/cloud partitions (parity-checked); returns the manifest.

    ``precision="int8"`` calibrates on ``calibration_images`` training images and
    must keep rank-1 / top-1 within 1 point of fp32 (else ExportError, unless
    ``allow_parity_fail``); the manifest's ``quantization`` records both.

    Example::

        manifest = api.export("runs/quick", split=4, target="onnx", out="runs/quick/onnx")
    """
    from patrol_compress.exporters import export_run

    return export_run(
        Path(run_dir),
        split,
        target,
        precision,
        _path(out),
        force,
        calibration_images=calibration_images,
        allow_parity_fail=allow_parity_fail,
    )


def bench(artifact_dir: Path | str, **kwargs: Any) -> dict[str, Any]:
    """Benchmark an exported edge partition (torch-free path); returns the measurements.

    Example::

        result = api.bench("runs/quick/onnx")
    """
    from patrol_compress.bench import bench as run_bench

    return run_bench(Path(artifact_dir), **kwargs)


def _locked(folder: Path) -> AbstractContextManager[object]:
    """The lock of the run ``folder`` belongs to, if that run folder exists yet.

    A job that writes into a run (attack, defend) must not run while a prune of
    it does; a folder that does not exist yet is new and has nothing to mix up
    (and creating it here would leave an empty folder behind a failed job).
    """
    from patrol_compress.locking import folder_lock, run_root

    root = run_root(folder)
    return folder_lock(root) if root.is_dir() else nullcontext()


def attack_output_free(out_dir: Path | str, force: bool) -> None:
    """Refuse to overwrite an earlier attack's results without ``force`` (checked before work).

    Example::

        api.attack_output_free("runs/quick", force=False)  # OutputExistsError if attacked
    """
    from patrol_compress.errors import OutputExistsError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder; choose another --out")
    if (out_dir / ATTACK_FILE).exists() and not force:
        raise OutputExistsError(
            f"{out_dir / ATTACK_FILE}: an attack's results are already here; "
            "pass --force to replace them or --out to write elsewhere"
        )


def attack(
    run_dir: Path | str,
    attacks: Sequence[str] | None = None,
    split: int | None = None,
    config: Path | str | None = None,
    out: Path | str | None = None,
    label: str | None = None,
    force: bool = False,
    artifact: Path | str | None = None,
) -> dict[str, Any]:
    """Model inversion attacks on the run's edge; writes attack.json and attack_grid.png.

    ``artifact``: the export folder the adaptive attack queries (e.g. an INT8
    export; default: the recipe's ``adaptive.artifact``, else the fp32 ONNX export).

    An existing ``attack.json`` in the output folder is refused unless ``force``,
    before the (minutes-long) attack starts, and the run folder is locked meanwhile.
    Returns what ``attack.json`` holds.

    Example::

        result = api.attack("runs/quick", attacks=["blackbox"], out="runs/quick/attack")
        print(result["attacks"]["blackbox"]["psnr"])
    """
    from patrol_compress.attacks import DEFAULT_ATTACKS
    from patrol_compress.attacks import attack as run_attacks

    out_dir = Path(out) if out is not None else Path(run_dir)
    attack_output_free(out_dir, force)
    with _locked(out_dir):
        attack_output_free(out_dir, force)  # again, now that no other job can write it
        names = list(attacks) if attacks else list(DEFAULT_ATTACKS)
        return run_attacks(
            Path(run_dir), names, split, _path(config), _path(out), label, artifact=_path(artifact)
        )


def defend(run_dir: Path | str, out: Path | str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The baseline defenses' sweeps (see :func:`patrol_compress.defenses.defend`), run locked.

    Returns what ``defenses.json`` holds.

    Example::

        result = api.defend("runs/quick", defenses=["noise"], strengths=[0.1, 0.3])
    """
    from patrol_compress.defenses import defend as run_defend

    out_dir = Path(out) if out is not None else Path(run_dir) / DEFENSES_DIR
    with _locked(out_dir):
        return run_defend(Path(run_dir), out=_path(out), **kwargs)


def report(
    paths: Sequence[Path | str] | Path | str,
    out: Path | str | None = None,
    title: str | None = None,
    force: bool = False,
) -> ReportFiles:
    """HTML + markdown privacy report of attack.json files (or folders holding them).

    ``out`` defaults to ``report.html`` in the first path (its folder, for a
    file). Torch-free. Returns the paths written and the number of points.

    Example::

        files = api.report(["runs/quick", "runs/baseline"], out="report/privacy.html")
        print(files.html, files.points)
    """
    from patrol_compress.report import build_report

    inputs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not inputs:
        from patrol_compress.errors import ArtifactError

        raise ArtifactError("report: no attack.json file or folder given")
    if out is None:
        first = inputs[0]
        out = (first.parent if first.suffix == ".json" else first) / "report.html"
    return build_report(inputs, Path(out), title=title, force=force)
