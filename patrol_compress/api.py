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

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patrol_compress.config.recipe import Recipe, load_recipe, parse_recipe
from patrol_compress.contracts import ATTACK_FILE, DEFENSES_DIR
from patrol_compress.errors import RecipeError, UsageError, storage_errors

if TYPE_CHECKING:
    from patrol_compress.config.privacy import AttackConfig
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


def _path(folder: Path | str | None, name: str = "path") -> Path | None:
    return None if folder is None else _as_path(folder, name)


def _as_path(value: object, name: str) -> Path:
    """``value`` as a Path; anything but a str or os.PathLike is one UsageError line."""
    if isinstance(value, Path):
        return value
    if isinstance(value, str) or (isinstance(value, os.PathLike) and not isinstance(value, bytes)):
        return Path(value)
    raise UsageError(f"{name}: expected a path (str or pathlib.Path), found {type(value).__name__}")


def _known_options(fn: Callable[..., Any], given: Mapping[str, Any], what: str) -> None:
    """Keyword arguments passed through ``**kwargs`` must be ``fn``'s own (else one line)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # fn takes any keyword (a wrapper): it checks its own
    known = [n for n in params if n not in ("run_dir", "artifact_dir")]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(f"{what}: unknown option(s) {unknown}; expected some of {known}")


KEEP_CHECKPOINTS = ("all", "last", "none")


def _keep(value: object) -> str:
    """``keep_checkpoints`` is checked before the job: an unknown value dropped every checkpoint."""
    if value not in KEEP_CHECKPOINTS:
        raise UsageError(
            f"keep_checkpoints: expected one of {', '.join(KEEP_CHECKPOINTS)}, found {value!r}"
        )
    return str(value)


@storage_errors
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

    keep = _keep(keep_checkpoints)
    return run_prune(as_recipe(recipe), _path(out, "out"), resume, force, quiet, keep)


@storage_errors
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

    keep = _keep(keep_checkpoints)
    return train_only(as_recipe(recipe), _path(out, "out"), resume, force, quiet, keep)


def run_folder(recipe: RecipeLike, out: Path | str | None = None) -> Path:
    """Where :func:`prune`/:func:`train` write for ``recipe`` and ``out``.

    Example::

        model = api.load_model(api.run_folder("recipes/quickstart.yaml"))
    """
    return as_recipe(recipe).run_dir(_path(out, "out"))


@storage_errors
def load_model(
    run_dir: Path | str,
    trust_model_code: bool = False,
    factory: str | Callable[..., Any] | None = None,
) -> BlockNet:
    """The network a finished ``prune`` or ``train`` saved in ``run_dir`` (eval mode, CPU).

    The weights are checked against their recorded sha256 and loaded without
    unpickling anything. A custom architecture (``model.arch: custom``) is
    built by code, which a run folder only names: pass ``factory`` (its
    ``'pkg.module:function'``, which must be the one the run records, or the
    function itself) or ``trust_model_code=True`` to import the one it records.

    Example::

        api.prune("recipes/quickstart.yaml", out="runs/quick")
        model = api.load_model("runs/quick")
        logits_or_embedding = model(images)
    """
    from patrol_compress.models.saved import load_run_model

    return load_run_model(_as_path(run_dir, "run_dir"), factory, trust_model_code)[0]


@storage_errors
def partitions(
    run_dir: Path | str,
    split: int | None = None,
    trust_model_code: bool = False,
    factory: str | Callable[..., Any] | None = None,
) -> tuple[BlockNet, BlockNet]:
    """The edge and cloud partitions of a run's model (``cloud(edge(x)) == model(x)``).

    ``split`` defaults to the split the run saved (its recipe's ``patrol.split``);
    ``trust_model_code`` and ``factory`` as in :func:`load_model`.

    Example::

        edge, cloud = api.partitions("runs/quick")
        features = edge(images)          # what the device sends
        output = cloud(features)
    """
    from patrol_compress.errors import ModelError
    from patrol_compress.models.saved import load_run_model
    from patrol_compress.models.split import split as split_model

    if split is not None and (isinstance(split, bool) or not isinstance(split, int)):
        raise ModelError(f"split must be a whole number of stages, found {split!r}")
    model, meta = load_run_model(_as_path(run_dir, "run_dir"), factory, trust_model_code)
    k = split if split is not None else meta.get("split")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ModelError(f"{run_dir}: the saved model records no split; pass split=K")
    return split_model(model, k)


@storage_errors
def export(
    run_dir: Path | str,
    split: int,
    target: str = "onnx",
    precision: str = "fp32",
    out: Path | str | None = None,
    force: bool = False,
    calibration_images: int = 300,
    allow_parity_fail: bool = False,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Export the run's model as edge/cloud partitions (parity-checked); returns the manifest.

    ``precision="int8"`` calibrates on ``calibration_images`` training images and
    must keep rank-1 / top-1 within 1 point of fp32 (else ExportError, unless
    ``allow_parity_fail``); the manifest's ``quantization`` records both.
    ``trust_model_code`` as in :func:`load_model`.

    Example::

        manifest = api.export("runs/quick", split=4, target="onnx", out="runs/quick/onnx")
    """
    from patrol_compress.exporters import export_run

    return export_run(
        _as_path(run_dir, "run_dir"),
        split,
        target,
        precision,
        _path(out, "out"),
        force,
        calibration_images=calibration_images,
        allow_parity_fail=allow_parity_fail,
        trust_model_code=trust_model_code,
    )


@storage_errors
def bench(artifact_dir: Path | str, **kwargs: Any) -> dict[str, Any]:
    """Benchmark an exported edge partition (torch-free path); returns the measurements.

    Example::

        result = api.bench("runs/quick/onnx")
    """
    from patrol_compress.bench import bench as run_bench

    _known_options(run_bench, kwargs, "bench")
    if kwargs.get("json_path") is not None:
        kwargs["json_path"] = _as_path(kwargs["json_path"], "json_path")
    return run_bench(_as_path(artifact_dir, "artifact_dir"), **kwargs)


def _locked(folder: Path) -> AbstractContextManager[object]:
    """The lock of the run ``folder`` lies in (however deep), or of ``folder`` if it exists.

    A job that writes into a run (attack, defend) must not run while a prune of
    it does; a folder that does not exist yet is new and has nothing to mix up
    (and creating it here would leave an empty folder behind a failed job).
    """
    from patrol_compress.locking import output_lock

    return output_lock(folder)


def _whole(value: object, name: str) -> None:
    """``value`` is None or a whole number (not a bool, not "2", not 2.5)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{name}: expected a whole number, found {value!r}"[:200])


def _attack_config(config: object) -> AttackConfig | Path | None:
    """``config`` of :func:`attack`: an AttackConfig, a mapping of one, or a YAML file's path."""
    from patrol_compress.config.base import validate
    from patrol_compress.config.privacy import AttackConfig

    if config is None or isinstance(config, AttackConfig):
        return config
    if isinstance(config, Mapping):
        return validate(AttackConfig, dict(config), "<attack config>")
    return _as_path(config, "config")


def _in_a_folder(path: Path, option: str) -> None:
    """The nearest existing part of ``path`` must be a folder: a file in the way is refused
    before a job of minutes, not when it writes its results."""
    from patrol_compress.errors import OutputExistsError

    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                raise OutputExistsError(
                    f"{part}: exists and is not a folder, so {option} {path} cannot be written"
                )
            return


def attack_output_free(out_dir: Path | str, force: bool) -> None:
    """Refuse to overwrite an earlier attack's results without ``force`` (checked before work).

    Example::

        api.attack_output_free("runs/quick", force=False)  # OutputExistsError if attacked
    """
    from patrol_compress.errors import OutputExistsError

    out_dir = _as_path(out_dir, "out")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder; choose another --out")
    _in_a_folder(out_dir, "--out")
    if (out_dir / ATTACK_FILE).exists() and not force:
        raise OutputExistsError(
            f"{out_dir / ATTACK_FILE}: an attack's results are already here; "
            "pass --force to replace them or --out to write elsewhere"
        )


@storage_errors
def attack(
    run_dir: Path | str,
    attacks: Sequence[str] | None = None,
    split: int | None = None,
    config: AttackConfig | Mapping[str, Any] | Path | str | None = None,
    out: Path | str | None = None,
    label: str | None = None,
    force: bool = False,
    artifact: Path | str | None = None,
    trust_model_code: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Model inversion attacks on the run's edge; writes attack.json and attack_grid.png.

    ``artifact``: the export folder the adaptive attack queries (e.g. an INT8
    export; default: the recipe's ``adaptive.artifact``, else the fp32 ONNX export).
    ``trust_model_code`` as in :func:`load_model`.

    An existing ``attack.json`` in the output folder is refused unless ``force``,
    before the (minutes-long) attack starts, and the run folder is locked meanwhile.
    ``resume`` continues an interrupted attack into the same output folder from
    the parts it finished (every trained decoder family, every white-box start).
    Returns what ``attack.json`` holds.

    Example::

        result = api.attack("runs/quick", attacks=["blackbox"], out="runs/quick/attack")
        print(result["attacks"]["blackbox"]["psnr"])
    """
    from patrol_compress.attacks import DEFAULT_ATTACKS
    from patrol_compress.attacks import attack as run_attacks

    run = _as_path(run_dir, "run_dir")
    out_dir = _as_path(out, "out") if out is not None else run
    _whole(split, "split")
    if isinstance(attacks, str):  # "blackbox,whitebox", as on the command line
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    attack_output_free(out_dir, force)
    with _locked(out_dir):
        attack_output_free(out_dir, force)  # again, now that no other job can write it
        names = list(attacks) if attacks else list(DEFAULT_ATTACKS)
        return run_attacks(
            run,
            names,
            split,
            _attack_config(config),
            out_dir,
            label,
            artifact=_path(artifact, "artifact"),
            trust_model_code=trust_model_code,
            resume=resume,
        )


@storage_errors
def frontier(
    recipe: Path | str,
    methods: list[str] | None = None,
    knobs: list[str] | None = None,
    seeds: list[int] | None = None,
    target_seeds: list[int] | None = None,
    references: list[int] | None = None,
    attacks: list[str] | None = None,
    config: Path | str | None = None,
    work: Path | str | None = None,
    out: Path | str | None = None,
    name: str | None = None,
    stage: str = "all",
    shard: tuple[int, int] = (0, 1),
    bootstrap: int | None = None,
    command: str | None = None,
    stem: str | None = None,
    quiet: bool = False,
) -> dict[str, Any] | None:
    """A privacy frontier of ``recipe``: methods against plain pruning at matched accuracy.

    Every argument left None comes from the recipe's ``frontier:`` section;
    ``config`` is an attack settings YAML (default: the recipe's ``attack:``).
    Work goes to ``work`` (default ``runs/frontier/<name>``) and is resumed;
    the results (JSON, markdown, SVG planes) to ``out`` (default: ``work``).
    Returns what the results JSON holds (None for the ``targets``/``points`` stages).

    Example::

        api.frontier("recipes/quickstart.yaml", methods=["pruning-only", "patrol"],
                     knobs=["recovery_epochs=8,16"], seeds=[0, 1], target_seeds=[0, 1])
    """
    from patrol_compress.config.privacy import load_attack_config
    from patrol_compress.config.recipe import load_recipe
    from patrol_compress.frontier import make_plan, run_frontier
    from patrol_compress.provenance import command_line

    loaded = load_recipe(recipe)
    plan = make_plan(
        loaded,
        str(recipe),
        methods=methods,
        knobs=knobs,
        seeds=seeds,
        target_seeds=target_seeds,
        references=references,
        attacks=attacks,
        attack=None if config is None else load_attack_config(config),
        bootstrap=bootstrap,
        name=name,
    )
    folder = Path(work) if work is not None else Path("runs") / "frontier" / plan.name
    return run_frontier(
        plan,
        folder,
        _path(out),
        stage,
        shard,
        command if command is not None else command_line(),
        None if quiet else print,
        stem,
    )


@storage_errors
def defend(run_dir: Path | str, out: Path | str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The baseline defenses' sweeps (see :func:`patrol_compress.defenses.defend`), run locked.

    ``trust_model_code=True`` (a keyword) as in :func:`load_model`.

    Returns what ``defenses.json`` holds.

    Example::

        result = api.defend("runs/quick", defenses=["noise"], strengths=[0.1, 0.3])
    """
    from patrol_compress.defenses import defend as run_defend

    _known_options(run_defend, kwargs, "defend")
    run = _as_path(run_dir, "run_dir")
    out_dir = _as_path(out, "out") if out is not None else run / DEFENSES_DIR
    attack_output_free(out_dir, force=True)  # a file in the way fails now, not after the sweeps
    with _locked(out_dir):
        return run_defend(run, out=_path(out, "out"), **kwargs)


@storage_errors
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

    if isinstance(paths, (str, Path)):
        inputs = [_as_path(paths, "paths")]
    elif isinstance(paths, Sequence):
        inputs = [_as_path(p, "paths") for p in paths]
    else:
        raise UsageError(
            f"paths: expected attack.json files or folders (a path or a list of them), found "
            f"{type(paths).__name__}"
        )
    if not inputs:
        from patrol_compress.errors import ArtifactError

        raise ArtifactError("report: no attack.json file or folder given")
    if out is None:
        first = inputs[0]
        out = (first.parent if first.suffix == ".json" else first) / "report.html"
    if title is not None and not isinstance(title, str):
        raise UsageError(f"title: expected text, found {type(title).__name__}")
    return build_report(inputs, _as_path(out, "out"), title=title, force=force)
