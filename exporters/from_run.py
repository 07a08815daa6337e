"""Export from a run directory: load the saved (possibly pruned) model, then export it.

Shared by ``patrol_compress.export`` and the ``export`` CLI command so both
pick the same split, output folder and manifest provenance.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patrol_compress.contracts import EXPORT_DIR, RECIPE_FILE
from patrol_compress.errors import ExportError, ModelError
from patrol_compress.locking import enclosing_run, folder_lock
from patrol_compress.rundir import remove_leftovers

from .base import EXPORTERS
from .int8 import DEFAULT_CALIBRATION_IMAGES, MAX_DROP_POINTS
from .partitions import check_target, check_uplink_export, export_partitions

if TYPE_CHECKING:
    from patrol_compress.config.recipe import ExportConfig, Recipe

    from .int8 import Int8Data


def default_out(run_dir: Path, target: str, split: int, precision: str) -> Path:
    """RUN/export/<target>-split<K>-<precision>."""
    return Path(run_dir) / EXPORT_DIR / f"{target}-split{split}-{precision}"


def resolve_split(split: int | None, info: dict[str, Any]) -> int:
    """The given split, else the one the run recorded; one of them is needed."""
    if split is not None:
        return int(split)
    saved = info.get("split")
    if saved is None:
        raise ExportError("this run does not record a split point; pass --split K")
    return int(saved)


def run_recipe(run_dir: Path) -> tuple[Recipe, Path] | None:
    """The recipe the run was made with and its file, if the run has one.

    That is ``RUN/recipe.resolved.yaml``, or the parent's for a prune run's
    ``RUN/target`` (the same lookup as ``attack``).
    """
    from patrol_compress.config.recipe import load_recipe

    for folder in (run_dir, run_dir.parent):
        if (folder / RECIPE_FILE).is_file():
            return load_recipe(folder / RECIPE_FILE), folder / RECIPE_FILE
    return None


def recipe_export_settings(run_dir: Path) -> ExportConfig:
    """The ``export:`` section of the recipe the run was made with, else the defaults."""
    from patrol_compress.config.recipe import ExportConfig

    found = run_recipe(run_dir)
    return found[0].export if found is not None else ExportConfig()


def run_int8_data(
    run_dir: Path,
    input_shape: tuple[int, ...],
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    allow_parity_fail: bool = False,
) -> Int8Data:
    """Calibration (training) and test images of the run's recipe, for an INT8 export.

    Seeded with the recipe's seed, so two exports of one run calibrate on the
    same images. The recipe's data must give the images the model was saved for.
    """
    from patrol_compress.data import build_data

    from .int8 import int8_data_from_bundle

    found = run_recipe(run_dir)
    if found is None:
        raise ExportError(
            f"{run_dir}: no {RECIPE_FILE} here or in its parent; INT8 export calibrates on the "
            "recipe's training images and checks accuracy on its test set"
        )
    recipe, path = found
    bundle = build_data(recipe.data)
    size = bundle.train.image_size
    channels = bundle.train.channels
    if (channels, size, size) != tuple(input_shape):
        raise ExportError(
            f"{path}: data gives {channels} x {size} x {size} images, the model in {run_dir} "
            f"takes {list(input_shape)}"
        )
    return int8_data_from_bundle(
        bundle,
        calibration_images,
        recipe.seed,
        {"recipe": str(path), "data": recipe.data.kind},
        MAX_DROP_POINTS,
        allow_parity_fail,
    )


def _check_arguments(
    split: object, target: object, precision: object, calibration_images: object
) -> None:
    """The API's arguments, typed as the CLI's are (``split="2"`` was read as 2, ``2.5`` as 2)."""
    for name, value in (("split", split), ("calibration_images", calibration_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ExportError(f"{name}: expected a whole number, found {value!r}"[:200])
    for name, value in (("target", target), ("precision", precision)):
        if not isinstance(value, str):
            raise ExportError(f"{name}: expected a name such as 'onnx' or 'fp32', found {value!r}")


def export_run(
    run_dir: Path | str,
    split: int | None = None,
    target: str = "onnx",
    precision: str = "fp32",
    out: Path | str | None = None,
    force: bool = False,
    opset: int | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    allow_parity_fail: bool = False,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Export the model saved in ``run_dir``; returns the manifest (with ``out_dir`` added).

    ``split`` and ``opset`` default to the run recipe's ``export.split`` and
    ``export.opset``; without a split there, the split the run recorded.
    ``precision="int8"`` calibrates on ``calibration_images`` of the recipe's
    training images and must keep task accuracy within 1 point of FP32 on its
    test set, else nothing is written (unless ``allow_parity_fail``).
    ``trust_model_code`` allows importing a custom ``model.factory`` the run
    names (:func:`patrol_compress.models.saved.load_run_model`).
    """
    from patrol_compress.models.saved import load_run_model

    _check_arguments(split, target, precision, calibration_images)
    EXPORTERS.get(target)  # a misspelt target before loading the model
    run_dir = Path(run_dir)
    model, info = load_run_model(run_dir, trust_model_code=trust_model_code)
    settings = recipe_export_settings(run_dir)
    k = resolve_split(split if split is not None else settings.split, info)
    stages = len(model.stage_names)
    if not 1 <= k <= stages:
        if split is not None:
            what = f"--split {k}"
        elif settings.split is not None:
            what = f"the recipe's export.split {k}"
        else:
            what = f"the run's split {k} (model.json)"
        raise ModelError(
            f"{what} is out of range: the model saved in {run_dir} has stages 1..{stages}"
        )
    if calibration_images < 1:
        raise ExportError(f"--calibration-images must be >= 1, found {calibration_images}")
    # A quantized uplink's refusals first: they hold whatever is installed here.
    check_uplink_export(model, k, target, precision)
    check_target(target, precision)  # before the INT8 data and any export work
    int8 = (
        run_int8_data(run_dir, tuple(info["input_shape"]), calibration_images, allow_parity_fail)
        if precision == "int8"
        else None
    )
    out_dir = Path(out) if out is not None else default_out(run_dir, target, k, precision)
    # Writing inside a run (this one by default, or another through --out): a prune of
    # that run must not run meanwhile.
    root = enclosing_run(out_dir)
    if root is None and out_dir.resolve().is_relative_to(run_dir.resolve()):
        root = run_dir.resolve()  # a bare saved-model folder: lock it all the same
    with folder_lock(root) if root is not None else contextlib.nullcontext():
        if root is not None and out_dir.parent.is_dir():
            remove_leftovers(out_dir.parent)  # a killed export's .partial (we hold the lock)
        manifest = export_partitions(
            model,
            k,
            out_dir,
            target,
            precision,
            tuple(info["input_shape"]),
            opset=opset if opset is not None else settings.opset,
            extra_manifest={
                "run": str(run_dir),
                "weights_sha256": info.get("weights", {}).get("sha256"),
            },
            force=force,
            int8=int8,
        )
    return {**manifest, "out_dir": str(out_dir)}
