"""The ``prune`` job: target -> PATROL fine-tuning -> removal -> recovery -> evaluation.

Each stage writes its outputs, then records itself in ``stages.json``; a rerun
with ``resume=True`` skips finished stages (their outputs are never rewritten)
and resumes an interrupted stage from its last per-epoch checkpoint. Every
training stage starts from its own seed (or its checkpoint's generators), so
what it computes does not depend on whether earlier stages ran in this process
or in an interrupted one.

Under torchrun (:mod:`patrol_compress.distributed`) every rank runs the
training stages on its share of each batch; rank 0 alone writes files,
evaluates, prints, and decides the removal plan: it removes the channels and
saves ``pruned/``, which every rank then loads, so all ranks recover the same
pruned network. The others wait for it at each stage's end.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from patrol_compress import distributed
from patrol_compress.config.recipe import Recipe
from patrol_compress.contracts import (
    ACCURACY_FILE,
    CHECKPOINTS_DIR,
    MASKED_WEIGHTS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PATROL_DIR,
    PATROL_SUMMARY_FILE,
    PRUNED_DIR,
    SAMPLES_FILE,
    TARGET_DIR,
)
from patrol_compress.data import build_data
from patrol_compress.data.base import DataBundle
from patrol_compress.errors import ArtifactError, ModelError, PatrolWarning, RecipeError
from patrol_compress.io import read_json, sha256_file, write_json
from patrol_compress.machine import check_thread_count
from patrol_compress.metrics.edge import edge_report
from patrol_compress.models import BlockNet, build_model, load_torchvision_backbone
from patrol_compress.models.factory import load_own_weights, own_state
from patrol_compress.models.saved import (
    load_resized,
    load_run_model,
    read_state_dict,
    save_model_file,
    save_run_model,
)
from patrol_compress.pruning.budget import BudgetConfig, EdgeBudget
from patrol_compress.pruning.masks import mask_summary
from patrol_compress.pruning.patrol import StageSettings, make_surrogate, patrol_finetune
from patrol_compress.pruning.pruner import PatrolPruner
from patrol_compress.rundir import RunDir, open_run
from patrol_compress.train.checkpoint import drop_checkpoints
from patrol_compress.train.evaluate import evaluate, headline, test_datasets
from patrol_compress.train.faults import fault_from_env
from patrol_compress.train.target import check_batches, steps_per_epoch, train_target
from patrol_compress.uplink import calibrate_uplink, measure_uplink, uplink_record

console = Console()


def model_info(recipe: Recipe, data: DataBundle) -> dict[str, Any]:
    return {
        "model": recipe.model.model_dump(mode="json"),
        "num_classes": data.num_classes,
        "in_channels": data.channels,
        "task": data.task,
        "image_size": data.image_size,
    }


def fresh_model(recipe: Recipe, data: DataBundle) -> BlockNet:
    """The recipe's network, initialised from ``model.pretrained`` when given."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.num_classes, data.channels, data.task, data.image_size)
    if recipe.model.pretrained is not None:
        try:
            state = read_state_dict(recipe.model.pretrained)
            if recipe.model.arch == "custom":
                load_own_weights(model, own_state(model, state))  # its own head too
            else:
                load_torchvision_backbone(model, state)
        except ModelError as exc:
            raise ModelError(f"model.pretrained {recipe.model.pretrained}: {exc}") from None
    return model


def _open_with_data(
    recipe: Recipe,
    out: Path | None,
    resume: bool,
    force: bool,
    preflight: Callable[[DataBundle], None] | None = None,
) -> tuple[RunDir, DataBundle]:
    """Load the data, run ``preflight`` on it, then open the run directory.

    The order matters: a malformed ``PATROL_FAULT``, a missing dataset, an
    impossible budget or a wrong checkpoint must fail before ``--force``
    empties an old run or a new output folder is created. The "data" stage
    then writes the sample grid. The returned run holds the folder's lock: the
    caller releases it when the job ends.

    Distributed: rank 0 loads first (it may generate and cache the data), the
    others read the cache after it.
    """
    ctx = distributed.current()
    fault_from_env()  # a malformed PATROL_FAULT must fail before --force clears anything
    torch.manual_seed(recipe.seed)
    t0 = time.perf_counter()
    data = ctx.run_on_main(lambda: build_data(recipe.data))
    if data is None:  # not rank 0: the cache is there now
        data = build_data(recipe.data)
    if preflight is not None:
        preflight(data)
    run = open_run(recipe, out, resume, force)
    try:
        if not run.done("data"):
            ctx.run_on_main(lambda: _write_samples(data, run))
            run.mark("data", time.perf_counter() - t0, **data.summary())
    except BaseException:
        run.release()
        raise
    return run, data


def _check_checkpoint(recipe: Recipe, model: BlockNet) -> None:
    """``train.checkpoint`` must be weights of exactly this (unpruned) architecture."""
    if recipe.train.checkpoint is not None:
        path = recipe.train.checkpoint
        state = own_state(model, read_state_dict(path))
        load_resized(model, state, f"train.checkpoint {path}", exact=True)


def example_inputs(recipe: Recipe, data: DataBundle) -> torch.Tensor:
    """The two random images every stage traces, checks and exports with (seeded)."""
    shape = (data.channels, data.image_size, data.image_size)
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(recipe.seed))


def patrol_pruner(
    recipe: Recipe,
    data: DataBundle,
    model: BlockNet,
    budget: BudgetConfig | EdgeBudget | None,
    surrogate: torch.nn.Module | None = None,
) -> PatrolPruner:
    """The pruner the PATROL stage drives: the recipe's split, budget and settings on ``model``."""
    cfg = recipe.patrol
    return PatrolPruner(
        model,
        example_inputs(recipe, data),
        split=cfg.split,
        budget=budget,
        total_steps=max(cfg.epochs * steps_per_epoch(data, recipe.train), 1),
        config=cfg,
        surrogate=surrogate,
        section="patrol",
    )


def _preflight(recipe: Recipe, data: DataBundle) -> tuple[EdgeBudget | None, list[str]]:
    """Everything prune can check before writing anything; returns the budget and warnings.

    A training batch must be drawable from the data, the split must exist in
    the model and ``train.checkpoint`` must fit it exactly; then a
    :class:`PatrolPruner` is built on the untrained architecture, so the
    plug-in's checks are the recipe's: settings, budget (reachable, resolved
    once here), masks, and the one-line warning of a mask schedule that would
    empty the blocks.
    """
    cfg = recipe.patrol
    check_batches(data, recipe.train)
    probe = fresh_model(recipe, data)
    n = len(probe.stage_names)
    if not 1 <= cfg.split <= n:
        raise ModelError(f"patrol.split: {cfg.split} is beyond this model's depth (stages 1..{n})")
    _check_checkpoint(recipe, probe)  # before masks are inserted into the probe
    if not cfg.enabled:
        return None, []
    if cfg.recovery_distill.enabled and cfg.recovery_distill.teacher is not None:
        _load_teacher_file(recipe, probe)  # a missing or foreign teacher: before any training
    budget = cfg.budget
    if budget is not None and (budget.latency_ms is not None or "latency" in budget.fit):
        check_thread_count(budget.latency.threads, "patrol.budget.latency.threads")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatrolWarning)
        pruner = patrol_pruner(recipe, data, probe, cfg.budget)
    said = [str(w.message) for w in caught if issubclass(w.category, PatrolWarning)]
    return pruner.budget, said


def check_prune(recipe: Recipe, data: DataBundle) -> EdgeBudget | None:
    """What ``prune`` checks before it writes anything (the split, the checkpoint, the
    plug-in's settings and whether the budget is reachable), for a caller that plans
    many runs and must refuse a bad one before the first is trained (the frontier);
    returns the resolved budget. Warnings are left to the run itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatrolWarning)
        return _preflight(recipe, data)[0]


TEACHER_FIELD = "patrol.recovery_distill.teacher"
DISTILL_STAGE = "distill_teacher"
"""The stages.json entry that records the distillation teacher's weights (sha256)."""


def _load_teacher_file(recipe: Recipe, model: BlockNet) -> str:
    """Load ``patrol.recovery_distill.teacher`` into ``model`` (exactly the recipe's unpruned
    architecture); returns the file's sha256. Safetensors or ``weights_only`` torch files."""
    path = recipe.patrol.recovery_distill.teacher
    assert path is not None
    if not path.is_file():
        raise RecipeError(f"{TEACHER_FIELD}: {path}: file not found")
    try:
        state = own_state(model, read_state_dict(path))
    except ArtifactError as exc:
        raise ModelError(f"{TEACHER_FIELD}: {exc}") from None
    load_resized(model, state, f"{TEACHER_FIELD} {path}", exact=True)
    return sha256_file(path)


def distill_teacher(
    recipe: Recipe, data: DataBundle, run: RunDir, target: BlockNet
) -> tuple[BlockNet, dict[str, Any]] | None:
    """The frozen teacher of ``patrol.recovery_distill`` and its record (None: off).

    The teacher is the run's unpruned target (a copy; its weights are
    ``target/model.safetensors``) or the file the recipe names. Its sha256 is
    recorded in ``stages.json`` (stage ``distill_teacher``) the first time; a
    resume whose teacher has other weights is refused before any training.
    """
    cfg = recipe.patrol.recovery_distill
    if not cfg.enabled:
        return None
    if cfg.teacher is None:
        teacher = copy.deepcopy(target).cpu()
        source = f"{TARGET_DIR}/{MODEL_FILE}"
        digest = sha256_file(run / TARGET_DIR / MODEL_FILE)
    else:
        teacher = fresh_model(recipe, data)
        digest = _load_teacher_file(recipe, teacher)
        source = str(cfg.teacher)
    teacher.eval().requires_grad_(False)
    record = {"teacher": source, "teacher_sha256": digest, "during_masks": cfg.during_masks}
    before = run.stages.get(DISTILL_STAGE)
    if isinstance(before, dict) and before.get("teacher_sha256") != digest:
        raise ArtifactError(
            f"{run.path}: this run distilled from a teacher whose weights had sha256 "
            f"{str(before.get('teacher_sha256'))[:16]}..., {source} now has {digest[:16]}...; "
            "restore that teacher, or use a new --out or --force"
        )
    if before is None:
        run.mark(DISTILL_STAGE, 0.0, **record)
    return teacher, record


def _load_or_train_target(
    recipe: Recipe, data: DataBundle, run: RunDir, resume: bool, quiet: bool
) -> BlockNet:
    target_dir = run / TARGET_DIR
    if run.done("target"):
        model, _ = load_run_model(target_dir, recipe.model.factory)
        return model
    start = time.perf_counter()
    if recipe.train.checkpoint is not None:
        model = fresh_model(recipe, data)
        _check_checkpoint(recipe, model)
        how = "loaded"
    else:
        model = fresh_model(recipe, data)
        train_target(
            model, data, recipe.train, run / CHECKPOINTS_DIR / "target", recipe.seed, resume, quiet
        )
        how = "trained"
    model.cpu().eval()
    distributed.current().run_on_main(
        lambda: save_run_model(target_dir, model, model_info(recipe, data))
    )
    run.mark("target", time.perf_counter() - start, how=how)
    return model


def prune(
    recipe: Recipe,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """Run the whole PATROL job for ``recipe``; returns the metrics written to metrics.json.

    ``keep_checkpoints``: which stage checkpoints stay once the job succeeded
    (:func:`~patrol_compress.train.checkpoint.drop_checkpoints`).
    """
    ctx = distributed.current()
    quiet = quiet or not ctx.main
    checked: dict[str, Any] = {}

    def preflight(data: DataBundle) -> None:
        checked["budget"], checked["warnings"] = _preflight(recipe, data)
        for line in checked["warnings"]:
            _say(quiet, f"warning: {line}")

    run, data = _open_with_data(recipe, out, resume, force, preflight)
    with run:  # the run folder stays locked until the job ends
        metrics = _prune_stages(
            recipe, run, data, checked["budget"], resume, quiet, checked["warnings"]
        )
        ctx.run_on_main(lambda: drop_checkpoints(run.path, keep_checkpoints))
        return metrics


def _prune_stages(
    recipe: Recipe,
    run: RunDir,
    data: DataBundle,
    budget: EdgeBudget | None,
    resume: bool,
    quiet: bool,
    said: list[str] | None = None,
) -> dict[str, Any]:
    """Every stage of :func:`prune` after the run folder is open (and locked)."""
    ctx = distributed.current()
    input_shape = (data.channels, data.image_size, data.image_size)
    cfg = recipe.patrol

    target = _load_or_train_target(recipe, data, run, resume, quiet)
    if not run.done("evaluate_target"):
        with run.stage("evaluate_target"):
            ctx.run_on_main(
                lambda: write_json(run / TARGET_DIR / ACCURACY_FILE, evaluate(target, data))
            )
    acc_before = read_json(run / TARGET_DIR / ACCURACY_FILE)
    _say(quiet, f"target model: {headline(acc_before)}")

    metrics: dict[str, Any] = {
        "split": cfg.split,
        "budget": budget.as_dict() if budget is not None else {"params": None, "bytes": None},
        "accuracy": {"before": acc_before},
        "edge": {},
        "warnings": list(said or []),
    }
    if cfg.enabled:
        final = _patrol_stages(recipe, data, run, target, budget, resume, quiet, metrics)
        collapse = accuracy_warning(metrics["accuracy"]["before"], metrics["accuracy"]["after"])
        if collapse is not None:
            metrics["warnings"].append(collapse)
            _say(quiet, f"warning: {collapse}")
    else:
        _say(quiet, "patrol.enabled is false: the target model is the final model")
        final = target
        metrics["accuracy"]["after"] = acc_before
        ctx.run_on_main(lambda: save_run_model(run.path, final, model_info(recipe, data)))

    def write_metrics() -> None:
        # Edge reports are rank 0's alone (nothing else needs them); ``target`` is
        # still the unpruned model (PATROL worked on a copy).
        metrics["edge"]["before"] = edge_report(target, cfg.split, input_shape)
        metrics["edge"]["after"] = edge_report(final, cfg.split, input_shape)
        if cfg.budget is not None and cfg.budget.fit_split is not None:
            metrics["budget"]["fit_split"] = cfg.budget.fit_split
            metrics["edge"]["fit_split_unpruned"] = edge_report(
                target, cfg.budget.fit_split, input_shape
            )
        metrics["stages"] = {k: v.get("seconds") for k, v in run.stages.items()}
        metrics["data"] = data.summary()
        write_json(run / METRICS_FILE, metrics)
        _print_table(metrics, quiet)

    ctx.run_on_main(write_metrics)
    if not ctx.main:
        return dict(read_json(run / METRICS_FILE))
    return metrics


COLLAPSE_RATIO = 0.5
"""A pruned model below this share of its target's accuracy is called collapsed."""


def accuracy_warning(before: dict[str, float], after: dict[str, float]) -> str | None:
    """One line when the pruned model's headline accuracy is far below the target's."""
    key = "top1" if "top1" in before else "rank1"
    if key not in after or before[key] <= 0 or after[key] >= COLLAPSE_RATIO * before[key]:
        return None
    return (
        f"the pruned model's {key} is {after[key]:.1%}, under half the target's "
        f"{before[key]:.1%} on the same test set (a collapse?): check patrol.mask_lr, "
        "lambda1/lambda2 and the budget before exporting"
    )


def _patrol_stages(
    recipe: Recipe,
    data: DataBundle,
    run: RunDir,
    target: BlockNet,
    budget: EdgeBudget | None,
    resume: bool,
    quiet: bool,
    metrics: dict[str, Any],
) -> BlockNet:
    """PATROL fine-tuning, removal and recovery, each a resumable stage driving one pruner."""
    distill = distill_teacher(recipe, data, run, target)
    teacher = None
    if distill is not None:
        teacher, metrics["distill"] = distill
    pruner = training_pruner(recipe, data, target, budget)
    if teacher is not None and recipe.patrol.recovery_distill.during_masks:
        pruner.distill_from(teacher, recipe.patrol.recovery_distill)
    _patrol_stage(recipe, data, run, pruner, resume, quiet)
    if pruner.distiller is not None:  # the teacher's hooks go; recovery attaches its own
        pruner.distiller.close()
        pruner.distiller = None
    summary_path = run / PATROL_DIR / PATROL_SUMMARY_FILE
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or not {"mask_sparsity", "surrogate_psnr"} <= summary.keys():
        raise ArtifactError(f"{summary_path}: lacks mask_sparsity/surrogate_psnr; it is corrupt")
    metrics["mask_sparsity"] = summary["mask_sparsity"]
    metrics["surrogate_psnr"] = summary["surrogate_psnr"]

    info = model_info(recipe, data)
    if not run.done("remove"):
        with run.stage("remove"):
            # The plan is decided here, once; the masks it reads are identical
            # on every rank (checked after every epoch by run_stage).
            distributed.current().run_on_main(lambda: _remove(run, pruner, info))
    # Every rank continues from rank 0's pruned network.
    pruned, pinfo = load_run_model(run / PRUNED_DIR, recipe.model.factory)
    metrics["removal"] = pinfo["removal"]
    _recover_stage(recipe, data, run, pruned, pinfo, resume, quiet, teacher)
    final, _ = load_run_model(run.path, recipe.model.factory)
    if not run.done("evaluate"):
        with run.stage("evaluate"):
            distributed.current().run_on_main(
                lambda: write_json(run / PRUNED_DIR / ACCURACY_FILE, evaluate(final, data))
            )
    metrics["accuracy"]["after"] = read_json(run / PRUNED_DIR / ACCURACY_FILE)
    _say(quiet, f"pruned model: {headline(metrics['accuracy']['after'])}")
    if distributed.current().main:
        uplink = measure_uplink(final, recipe.patrol.split, evaluation_images(data))
        if uplink is not None:
            metrics["uplink"] = uplink
            _say(
                quiet,
                f"uplink: at most {uplink['uplink_bits_max']} bits per image (bound); codes "
                f"use about {uplink['empirical_entropy_bits']} bits on "
                f"{uplink['entropy_images']} evaluation images (estimate)",
            )
            if "uplink_capacity_bits" in uplink:
                _say(
                    quiet,
                    f"uplink noise ({uplink['noise']:g} steps): at most "
                    f"{uplink['uplink_capacity_bits']} bits of information per image (bound)",
                )
    return final


UPLINK_ENTROPY_IMAGES = 1000
"""Evaluation images the uplink's empirical entropy is estimated on (the first ones)."""


def evaluation_images(data: DataBundle) -> torch.Tensor:
    """The first evaluation images (test, or query then gallery), augmentation off."""
    images: list[torch.Tensor] = []
    for ds in test_datasets(data):
        was = ds.augment
        ds.set_augment(False)
        try:
            take = min(len(ds), UPLINK_ENTROPY_IMAGES - len(images))
            images += [ds[i][0] for i in range(take)]
        finally:
            ds.set_augment(was)
    return torch.stack(images)


def training_pruner(
    recipe: Recipe, data: DataBundle, target: BlockNet, budget: EdgeBudget | None
) -> PatrolPruner:
    """The PATROL stage's pruner: on a copy of the target, with the surrogate the recipe asks
    for (benchmarks time the stage through this very function).

    Seeded whether or not there is a surrogate to initialise: the stage's
    random draws must not depend on what ran before it in this process.
    Inserting the masks draws no random numbers, so the surrogate, built
    first, starts from the same draws as when it was built after them.
    """
    model = copy.deepcopy(target).cpu()
    torch.manual_seed(recipe.seed + 2)
    surrogate = make_surrogate(model, recipe, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatrolWarning)  # the preflight said them
        pruner = patrol_pruner(recipe, data, model, budget, surrogate)
    calibrate_uplink(model, recipe.patrol.split, calibration_images(data))
    return pruner


UPLINK_CALIBRATION_IMAGES = 256
"""Training images (the first ones, in order) whose features set the uplink's first range."""


def calibration_images(data: DataBundle) -> torch.Tensor:
    """The first training images, augmentation off: a deterministic calibration batch
    (indexed directly: a DataLoader would draw from the global generator)."""
    was = data.train.augment
    data.train.set_augment(False)
    try:
        n = min(len(data.train), UPLINK_CALIBRATION_IMAGES)
        return torch.stack([data.train[i][0] for i in range(n)])
    finally:
        data.train.set_augment(was)


def _patrol_stage(
    recipe: Recipe, data: DataBundle, run: RunDir, pruner: PatrolPruner, resume: bool, quiet: bool
) -> None:
    """Mask fine-tuning, or (stage done) its masked weights back from ``patrol/``."""
    model, tau = pruner.model, recipe.patrol.tau
    if run.done("patrol"):
        masked = run / PATROL_DIR / MASKED_WEIGHTS_FILE  # a corrupt file is one line
        load_resized(model, read_state_dict(masked), "patrol/masked")
        return
    with run.stage("patrol"):
        folder = run / CHECKPOINTS_DIR / "patrol"
        history, psnr = patrol_finetune(pruner, data, recipe, folder, pruner.budget, resume, quiet)
        pruner.to("cpu")

        def save_patrol() -> None:
            write_json(
                run / PATROL_DIR / PATROL_SUMMARY_FILE,
                {
                    "history": history,
                    "surrogate_psnr": psnr,
                    "mask_sparsity": mask_summary(pruner.net, tau),
                },
            )
            save_model_file(run / PATROL_DIR / MASKED_WEIGHTS_FILE, model)

        distributed.current().run_on_main(save_patrol)


def _remove(run: RunDir, pruner: PatrolPruner, info: dict[str, Any]) -> None:
    """Remove the masked channels (rank 0) and save the pruned network for every rank."""
    pruner.prune()
    assert pruner.removal is not None
    removal = pruner.removal
    extra = {
        "removed_blocks": removal.removed_blocks,
        "removal": removal.as_dict(),
        **_uplink_info(pruner.net, pruner.split),
    }
    save_run_model(run / PRUNED_DIR, pruner.net, {**info, **extra})


def _uplink_info(model: BlockNet, split: int) -> dict[str, Any]:
    """``model.json``'s record of a quantized uplink (nothing for an fp32 one)."""
    record = uplink_record(model, split)
    return {} if record is None else {"uplink": record}


def _recover_stage(
    recipe: Recipe,
    data: DataBundle,
    run: RunDir,
    pruned: BlockNet,
    pinfo: dict[str, Any],
    resume: bool,
    quiet: bool,
    teacher: BlockNet | None = None,
) -> None:
    if run.done("recover"):
        return
    with run.stage("recover"):
        if recipe.patrol.uplink.recalibrate:
            # Before a resumed recovery loads its checkpoint, which then overrides it; the
            # same images and the same pruned edge give the same range on every rank.
            calibrate_uplink(pruned, recipe.patrol.split, calibration_images(data), again=True)
        _recover(recipe, data, pruned, run, resume, quiet, teacher)
        pruned.cpu().eval()
        info = {
            **model_info(recipe, data),
            "removed_blocks": pinfo.get("removed_blocks", []),
            "removal": pinfo["removal"],
            "split": recipe.patrol.split,
            **_uplink_info(pruned, recipe.patrol.split),
        }
        distributed.current().run_on_main(lambda: save_run_model(run.path, pruned, info))


def _recover(
    recipe: Recipe,
    data: DataBundle,
    pruned: BlockNet,
    run: RunDir,
    resume: bool,
    quiet: bool,
    teacher: BlockNet | None = None,
) -> None:
    """Short fine-tune of the pruned model.

    With ``recovery_privacy`` (default) it is PATROL's objective without masks:
    the Lipschitz term and a surrogate re-mirrored on the pruned edge stay on,
    so accuracy comes back without training the privacy back out of the edge.
    Otherwise it is plain supervised training. With a ``teacher``
    (``patrol.recovery_distill``) the distillation loss is added; without the
    privacy terms that runs through a recovery pruner with both terms off (the
    same loss, Adam and cosine schedule as the plain fine-tune, but the edge's
    BatchNorms on running statistics, as in every pruner-driven stage).
    """
    cfg = recipe.patrol
    if cfg.recovery_epochs == 0:
        return
    lr = cfg.recovery_lr if cfg.recovery_lr is not None else recipe.train.lr
    folder = run / CHECKPOINTS_DIR / "recover"
    privacy = cfg.recovery_privacy and (cfg.lipschitz.enabled or cfg.adversarial.enabled)
    if not privacy and teacher is None:
        rcfg = recipe.train.model_copy(
            update={"epochs": cfg.recovery_epochs, "lr": lr, "warmup_epochs": 0}
        )
        torch.manual_seed(recipe.seed + 3)
        train_target(pruned, data, rcfg, folder, recipe.seed + 3, resume, quiet, stage="recover")
        return
    torch.manual_seed(recipe.seed + 4)  # seeded with or without a surrogate, as in PATROL
    settings_cfg = cfg.settings()
    if not privacy:
        off = {"enabled": False}
        settings_cfg = settings_cfg.model_copy(
            update={
                "lipschitz": settings_cfg.lipschitz.model_copy(update=off),
                "adversarial": settings_cfg.adversarial.model_copy(update=off),
            }
        )
    pruner = PatrolPruner.for_recovery(
        pruned,
        example_inputs(recipe, data),
        cfg.split,
        config=settings_cfg,
        surrogate=make_surrogate(pruned, recipe, data) if privacy else None,
        section="patrol",
    )
    if teacher is not None:
        pruner.distill_from(teacher, cfg.recovery_distill)
    settings = StageSettings("recover", cfg.recovery_epochs, lr)
    patrol_finetune(pruner, data, recipe, folder, None, resume, quiet, settings)
    pruner.close()


def _write_samples(data: DataBundle, run: RunDir) -> None:
    try:
        from patrol_compress.data.grid import save_sample_grid
    except ImportError:  # pragma: no cover - grid helper ships with the data package
        return
    save_sample_grid(data, run / SAMPLES_FILE)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        console.print(text, highlight=False)


def _fmt(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def _print_table(metrics: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    t = Table(title=f"patrol-compress: edge at split {metrics['split']}")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    acc_b, acc_a = metrics["accuracy"]["before"], metrics["accuracy"]["after"]
    for k in acc_b:
        t.add_row(k, f"{acc_b[k] * 100:.1f}%", f"{acc_a.get(k, float('nan')) * 100:.1f}%")
    eb, ea = metrics["edge"]["before"], metrics["edge"]["after"]
    for k in ("params", "weight_bytes", "macs", "bytes_sent"):
        t.add_row(f"edge {k}", _fmt(eb[k]), _fmt(ea[k]))
    for k in ("params", "macs"):
        if metrics["budget"].get(k) is not None:
            t.add_row(f"budget {k}", "", _fmt(metrics["budget"][k]))
    if metrics["budget"].get("latency_ms") is not None:
        lat = metrics["budget"]["latency"]
        measured = metrics.get("removal", {}).get("latency_ms")
        t.add_row(
            f"budget latency ({lat['runtime']}, {lat['threads']} thr, batch {lat['batch']})",
            "",
            f"{metrics['budget']['latency_ms']:.3f} ms"
            + (f" (measured {measured:.3f})" if measured is not None else ""),
        )
    console.print(t)


def train_only(
    recipe: Recipe,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    keep_checkpoints: str = "all",
) -> dict[str, Any]:
    """The ``train`` command: data and target stages, then accuracy into metrics.json."""
    ctx = distributed.current()
    quiet = quiet or not ctx.main

    def preflight(data: DataBundle) -> None:
        check_batches(data, recipe.train)
        _check_checkpoint(recipe, fresh_model(recipe, data))

    run, data = _open_with_data(recipe, out, resume, force, preflight)
    with run:  # the run folder stays locked until the job ends
        metrics = _train_stages(recipe, run, data, resume, quiet)
        ctx.run_on_main(lambda: drop_checkpoints(run.path, keep_checkpoints))
        return metrics


def _train_stages(
    recipe: Recipe, run: RunDir, data: DataBundle, resume: bool, quiet: bool
) -> dict[str, Any]:
    """Every stage of :func:`train_only` after the run folder is open (and locked)."""
    ctx = distributed.current()
    target = _load_or_train_target(recipe, data, run, resume, quiet)

    def finish() -> dict[str, Any]:
        acc = evaluate(target, data)
        write_json(run / TARGET_DIR / ACCURACY_FILE, acc)
        save_run_model(run.path, target, model_info(recipe, data))
        input_shape = (data.channels, data.image_size, data.image_size)
        metrics = {
            "split": recipe.patrol.split,
            "accuracy": acc,
            "edge": edge_report(target, recipe.patrol.split, input_shape),
            "data": data.summary(),
            "stages": {k: v.get("seconds") for k, v in run.stages.items()},
        }
        write_json(run / METRICS_FILE, metrics)
        _say(quiet, f"target model: {headline(acc)}")
        return metrics

    metrics = ctx.run_on_main(finish)
    return metrics if metrics is not None else dict(read_json(run / METRICS_FILE))
