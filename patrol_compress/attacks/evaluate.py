"""``attack(run_dir)``: run inversion attacks on a run's edge and score them all alike.

Loads the run's model, splits it at the run's split (or the one given), builds
the attacker / evaluation / recogniser images from the run's resolved recipe
(``recipe.resolved.yaml`` in the run folder, or in its parent for the
``target/`` and ``pruned/`` sub-folders of a prune run), runs each attack and
scores every reconstruction with the same per-image metrics
(:mod:`patrol_compress.metrics.image`). Writes ``attack.json`` (atomically) and
``attack_grid.png``: originals on the top row, one row per attack below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from patrol_compress.attacks.base import ATTACKS, AttackContext, AttackError
from patrol_compress.attacks.data import AttackData, build_attack_data
from patrol_compress.attacks.parts import PartStore
from patrol_compress.attacks.progress import AttackProgress
from patrol_compress.config.privacy import AttackConfig, load_attack_config
from patrol_compress.config.recipe import Recipe, load_recipe
from patrol_compress.contracts import (
    ATTACK_FILE,
    ATTACK_GRID,
    MANIFEST,
    METRICS_FILE,
    RECIPE_FILE,
    AttackResult,
    check_record,
)
from patrol_compress.data.base import DataBundle, ReidDataset
from patrol_compress.errors import ArtifactError, ModelError
from patrol_compress.io import package_versions
from patrol_compress.machine import check_thread_count
from patrol_compress.metrics.image import (
    METHOD_NOTE,
    attack_accuracy,
    image_metrics,
    psnr_per_image,
    region_metrics,
    ssim_per_image,
    train_recogniser,
)
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import check_split
from patrol_compress.record_pair import replace_pair

DEFAULT_ATTACKS = ("blackbox", "whitebox", "adaptive")
GRID_MIN_PIXELS = 96
"""Grid cells are enlarged (nearest neighbour) to at least this many pixels."""


def find_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe of ``run_dir`` or of the prune run it belongs to."""
    for folder in (run_dir, run_dir.parent):
        if (folder / RECIPE_FILE).is_file():
            return load_recipe(folder / RECIPE_FILE)
    raise ArtifactError(
        f"{run_dir / RECIPE_FILE}: not found here or in the parent folder; "
        "the attack needs the run's data settings"
    )


def _split(split: int | None, meta: dict[str, Any], recipe: Recipe) -> tuple[int, str]:
    if split is not None:
        return int(split), "argument"
    if meta.get("split") is not None:
        return int(meta["split"]), "run"
    return recipe.patrol.split, "recipe patrol.split"


def _context(
    run_dir: Path | None,
    split: int,
    cfg: AttackConfig,
    data: AttackData,
    model: BlockNet,
    meta: dict[str, Any],
    quiet: bool = False,
) -> AttackContext:
    from patrol_compress.models import split as split_model
    from patrol_compress.models.split import block_shapes, edge_stage_blocks
    from patrol_compress.train.loop import device

    dev = device()
    model.to(dev).eval()
    shape = tuple(int(d) for d in meta["input_shape"])
    if tuple(data.eval_images.shape[1:]) != shape:
        raise ModelError(
            f"{f'{run_dir}: ' if run_dir else ''}model expects images {list(shape)}, the "
            "recipe's data gives "
            f"{list(data.eval_images.shape[1:])}"
        )
    edge, _ = split_model(model, split)
    return AttackContext(
        model=model,
        edge=edge,
        split=split,
        input_shape=(shape[0], shape[1], shape[2]),
        shapes=block_shapes(edge_stage_blocks(model, split), shape),
        attacker_data=data.attacker,
        eval_images=data.eval_images,
        mean_image=data.mean_image,
        config=cfg,
        device=dev,
        run_dir=run_dir,
        quiet=quiet,
    )


def region_boxes(data: AttackData, cfg: AttackConfig) -> tuple[Any, str] | None:
    """The boxes the region is scored on (per image where the data has them) and a note."""
    r = cfg.region
    if r is None:
        return None
    if r.per_image and data.eval_boxes is not None:
        return data.eval_boxes, (
            f"'{r.name}': the exact per-image box the dataset records (the generated "
            "vehicles' pasted plates); SSIM is the full-image SSIM map averaged over the box"
        )
    return tuple(r.box), (
        f"'{r.name}': fixed box {list(r.box)} (x0, y0, x1, y1 fractions) for every image; "
        "SSIM is the full-image SSIM map averaged over the box"
    )


def _score(
    originals: torch.Tensor,
    recon: torch.Tensor,
    labels: torch.Tensor,
    recogniser: torch.nn.Module,
    region: tuple[Any, str] | None,
) -> dict[str, Any]:
    n = len(recon)
    x = originals[:n]
    out: dict[str, Any] = {"images": n, **image_metrics(x, recon)}
    # Per-image scores (in evaluation-image order) let a benchmark bootstrap over images.
    out["per_image"] = {
        "psnr": [round(float(v), 3) for v in psnr_per_image(x, recon)],
        "ssim": [round(float(v), 4) for v in ssim_per_image(x, recon)],
    }
    out["attack_accuracy"] = attack_accuracy(recogniser, recon, labels[:n])
    if region is not None:
        box = region[0][:n] if isinstance(region[0], torch.Tensor) else region[0]
        out["region"] = region_metrics(x, recon, box)
    return out


def _grid(path: Path, originals: torch.Tensor, rows: dict[str, torch.Tensor], n: int) -> list[str]:
    from patrol_compress.data.grid import save_image_grid

    n = min(n, len(originals))
    cells: list[Any] = list(originals[:n])
    for rec in rows.values():
        cells += [rec[i] if i < len(rec) else None for i in range(n)]
    scale = max(1, -(-GRID_MIN_PIXELS // originals.shape[-1]))
    save_image_grid(cells, path, ncols=n, scale=scale)
    return ["original", *rows]


_RECOGNISERS: dict[str, torch.nn.Module] = {}
"""Recognisers by what they were trained on: a defense sweep attacks the same
images many times, and the recogniser depends only on the clean reference set,
its settings and the seed (deterministic training), not on the model attacked."""


def _recogniser(data: AttackData, cfg: AttackConfig) -> torch.nn.Module:
    import hashlib
    import json

    from patrol_compress.train.loop import device

    rc = cfg.recogniser
    h = hashlib.sha256(data.reference_images.numpy().tobytes())
    h.update(data.reference_labels.numpy().tobytes())
    h.update(json.dumps([rc.model_dump(mode="json"), cfg.seed, data.num_classes]).encode())
    key = h.hexdigest()
    if key not in _RECOGNISERS:
        _RECOGNISERS.clear()  # one cached at a time: a sweep uses one data set
        _RECOGNISERS[key] = train_recogniser(
            data.reference_images,
            data.reference_labels,
            data.num_classes,
            device(),
            steps=rc.steps,
            width=rc.width,
            lr=rc.lr,
            batch_size=rc.batch_size,
            seed=cfg.seed,
        )
    return _RECOGNISERS[key]


def series_of(recipe: Recipe, meta: dict[str, Any]) -> tuple[str, str]:
    """(series, label prefix) of an undefended or PATROL-pruned run, for the report's plane.

    A model without a removal record is the unpruned target ("none"); a pruned
    one is named by the privacy terms its recipe enabled, so the ablations of
    Table II land in their own series.
    """
    if not meta.get("removal"):
        return "none", "no defense"
    lip = recipe.patrol.lipschitz.enabled
    adv = recipe.patrol.adversarial.enabled
    if lip and adv:
        return "patrol", "PATROL"
    if not lip and not adv:
        return "pruning-only", "pruning only"
    return ("pruning+lip", "pruning + Lipschitz") if lip else ("pruning+adv", "pruning + adv")


def _run_budget(run: Path) -> dict[str, Any] | None:
    from patrol_compress.io import read_json

    for folder in (run, run.parent):
        if (folder / METRICS_FILE).is_file():
            budget = read_json(folder / METRICS_FILE).get("budget")
            return budget if isinstance(budget, dict) else None
    return None


def attack(
    run_dir: Path | str,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    split: int | None = None,
    config: AttackConfig | Path | str | None = None,
    out: Path | str | None = None,
    label: str | None = None,
    quiet: bool = False,
    artifact: Path | str | None = None,
    trust_model_code: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``attacks`` on the run's edge; write ``attack.json`` and ``attack_grid.png``.

    ``config`` is an :class:`AttackConfig`, a YAML file of one, or None for the
    run recipe's ``attack:`` section. Output goes to ``out`` (default: the run
    folder). ``label`` names the point in reports (default: series and split,
    plus the precision of a non-fp32 ``artifact``). ``artifact`` is the export
    folder the adaptive attack queries (overrides ``adaptive.artifact``), e.g.
    an INT8 export, to measure what its uint8 uplink leaks. ``trust_model_code``
    allows importing a custom ``model.factory`` the run names
    (:func:`patrol_compress.models.saved.load_run_model`). ``resume`` keeps the parts an
    interrupted attack into the same ``out`` finished
    (:mod:`patrol_compress.attacks.parts`).
    Returns what ``attack.json`` holds.
    """
    from patrol_compress.models.saved import load_run_model

    names = _names(attacks)
    precision = _artifact_precision(artifact, names)
    run = Path(run_dir)
    model, meta = load_run_model(run, trust_model_code=trust_model_code)
    recipe = find_recipe(run)
    cfg = _config(config, recipe)
    if artifact is not None:
        adaptive = cfg.adaptive.model_copy(update={"artifact": Path(artifact)})
        cfg = cfg.model_copy(update={"adaptive": adaptive})
    if "adaptive" in names:  # before the minutes of the other attacks
        check_thread_count(
            cfg.adaptive.threads, "attack.adaptive.threads", "ONNX Runtime's default"
        )
    k, k_source = _split(split, meta, recipe)
    series, prefix = series_of(recipe, meta)
    suffix = f" {precision}" if precision not in (None, "fp32") else ""
    return attack_model(
        model,
        meta,
        recipe,
        names,
        k,
        cfg,
        Path(out) if out is not None else run,
        run_dir=run,
        facts={
            "run": str(run),
            "split_source": k_source,
            "label": label or f"{prefix} split {k}{suffix}",
            "series": series,
            "defense": None,
            "budget": _run_budget(run),
        },
        quiet=quiet,
        resume=resume,
    )


def _artifact_precision(artifact: Path | str | None, names: list[str]) -> str | None:
    """The precision of the artifact the adaptive attack is pointed at (checked before work)."""
    if artifact is None:
        return None
    if "adaptive" not in names:
        raise AttackError("--artifact is the adaptive attack's target; add adaptive to --attack")
    from patrol_compress.contracts import read_manifest

    return str(read_manifest(artifact)["precision"])


def _names(attacks: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(attacks))
    if not names:
        raise AttackError("no attack selected; choose from " + ", ".join(ATTACKS.names()))
    for name in names:
        ATTACKS.get(name)  # fail on a typo before loading anything
    return names


def _config(config: AttackConfig | Path | str | None, recipe: Recipe) -> AttackConfig:
    if isinstance(config, AttackConfig):
        return config
    return recipe.attack if config is None else load_attack_config(config)


def image_set(images: torch.Tensor) -> dict[str, Any]:
    """Which evaluation images a score is on: their count and the sha256 of their pixels."""
    from patrol_compress.attacks.parts import tensor_digest

    return {"images": len(images), "sha256": tensor_digest(images)}


def strongest(results: dict[str, Any]) -> dict[str, Any]:
    """The attack the attacker would pick: the best score on its own validation images.

    Every attack must have been scored on the same evaluation images
    (``image_set``): comparing a 32-image score with a 500-image one is not a
    comparison, so mixed sets raise :class:`AttackError`. The choice uses each
    attack's ``val_psnr`` (the attacker's held-out images, never the
    evaluation images); the evaluation scores of the chosen attack are
    reported. ``eval_max_psnr`` is the best evaluation PSNR of any attack, for
    a reader who wants the most pessimistic view.

    ``converged`` is False when that attack did not beat the label-only floor
    (see :func:`beats_floor`): then no attack worked, and the point measures
    the attacker's failure, not the defense.
    """
    sets = {json.dumps(r.get("image_set"), sort_keys=True) for r in results.values()}
    if len(sets) != 1 or any(r.get("image_set") is None for r in results.values()):
        found = ", ".join(
            f"{n}: {r.get('image_set', {}).get('images', '?')} images" for n, r in results.items()
        )
        raise AttackError(
            f"the attacks were scored on different evaluation images ({found}); the strongest "
            "attack can only be chosen among scores on the same images"
        )
    missing = [n for n, r in results.items() if r.get("val_psnr") is None]
    if missing:
        raise AttackError(
            f"attack(s) {', '.join(missing)} report no validation score (info['val_psnr']); the "
            "strongest attack is chosen on the attacker's validation images"
        )
    name = max(results, key=lambda n: results[n]["val_psnr"])
    r = results[name]
    return {
        "attack": name,
        "family": r.get("info", {}).get("family"),
        "psnr": r["psnr"],
        "ssim": r["ssim"],
        "val_psnr": r["val_psnr"],
        "chosen_by": "best PSNR on the attacker's validation images",
        "eval_max_psnr": max(float(x["psnr"]) for x in results.values()),
        "image_set": r["image_set"],
        "converged": bool(r.get("converged", True)),
    }


def attack_floor(data: AttackData, n: int) -> dict[str, float]:
    """Per metric, the higher of the label-only and mean-image floors on the first ``n`` images.

    An attacker who knows only the label draws that class's (identity's) mean
    image, one who knows nothing draws the mean image. Which is higher depends
    on the data: a class mean of Fashion-MNIST is a sharp silhouette, while an
    identity's few other photos of the generated vehicles average over
    cameras and backgrounds and can score below the global mean. Where an
    attack trains for SSIM too (``loss: mix``), the label-only guess fitted to
    that loss counts as well (:mod:`patrol_compress.attacks.floors`).
    """
    x = data.eval_images[:n]
    scores = [image_metrics(x, g) for g in floor_guesses(data, n).values()]
    return {k: max(s[k] for s in scores) for k in ("psnr", "ssim")}


def floor_guesses(data: AttackData, n: int | None = None) -> dict[str, torch.Tensor]:
    """The guesses that need no features, for the first ``n`` evaluation images (all: None):
    the mean image, the label's mean, and with a ``mix`` attacker the label's mix-fitted image."""
    x = data.eval_images[:n]
    guesses = {"mean_image": data.mean_image.expand_as(x), "label_only": data.label_only[:n]}
    if data.label_only_mix is not None:
        guesses["label_only_mix"] = data.label_only_mix[:n]
    return guesses


def recipe_floors(recipe: Recipe, cfg: AttackConfig) -> dict[str, dict[str, float]]:
    """PSNR, SSIM and MSE of each floor guess on the evaluation images ``attack`` would score
    for ``recipe``'s data under ``cfg``; attacks nothing (the floors depend on no model)."""
    data = _attack_data(recipe, cfg)
    return {k: image_metrics(data.eval_images, g) for k, g in floor_guesses(data).items()}


def _attack_data(recipe: Recipe, cfg: AttackConfig, bundle: DataBundle | None = None) -> AttackData:
    """The attacker, evaluation and recogniser images of ``recipe``'s data under ``cfg``."""
    from patrol_compress.data import build_data

    bundle = bundle if bundle is not None else build_data(recipe.data)
    attacker_train = attacker_train_split(recipe) if cfg.attacker_data == "train" else None
    return build_attack_data(bundle, cfg, attacker_train)


def beats_floor(scores: dict[str, Any], floor: dict[str, float]) -> bool:
    """Whether an attack beat the floor (:func:`attack_floor`) in PSNR *and* SSIM.

    An inversion attack that does not learned nothing usable from the
    features, whatever the reason (too weak, not trained long enough), and
    its score must not be reported as the defense's success.
    """
    return bool(scores["psnr"] > floor["psnr"] and scores["ssim"] > floor["ssim"])


_ATTACKER_TRAIN: dict[str, ReidDataset] = {}
"""The uncapped training split by data settings (one at a time, like the recognisers)."""


def attacker_train_split(recipe: Recipe) -> ReidDataset | None:
    """The data source's whole training split when the recipe caps it, else None.

    The target may be trained on a capped subset (``data.max_train_images``)
    to fit a small machine, but the attacker's images are not limited by what
    the victim trained on: it gets every training-distribution image the
    source has (``blackbox.max_images`` caps it explicitly).
    """
    import json

    from patrol_compress.data import build_data

    if not recipe.data.max_train_images:
        return None
    uncapped = recipe.data.model_copy(update={"max_train_images": 0})
    key = json.dumps(uncapped.model_dump(mode="json"), sort_keys=True)
    if key not in _ATTACKER_TRAIN:
        _ATTACKER_TRAIN.clear()
        _ATTACKER_TRAIN[key] = build_data(uncapped).train
    return _ATTACKER_TRAIN[key]


def attack_model(
    model: BlockNet,
    meta: dict[str, Any],
    recipe: Recipe,
    attacks: Sequence[str],
    split: int,
    cfg: AttackConfig,
    out_dir: Path,
    run_dir: Path | None = None,
    facts: dict[str, Any] | None = None,
    data_bundle: DataBundle | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Attack an in-memory model (a run's, or a defended copy) and write the results.

    Besides the attack scores, ``attack.json`` records the attacked model's own
    accuracy and edge size, so every point of the privacy-utility plane is
    self-describing; ``facts`` (label, series, defense, budget, ...) are merged
    in as given. ``data_bundle`` reuses already-built data.
    """
    from patrol_compress.data import build_data

    names = _names(attacks)
    check_split(model, split)
    torch.manual_seed(cfg.seed)
    bundle = data_bundle if data_bundle is not None else build_data(recipe.data)
    data = _attack_data(recipe, cfg, bundle)
    ctx = _context(run_dir, split, cfg, data, model, meta, quiet)
    accuracy, edge = _own_accuracy_and_edge(model, bundle, split, ctx.input_shape, facts)

    start = time.perf_counter()
    recogniser = _recogniser(data, cfg)
    recogniser_s = time.perf_counter() - start
    region = region_boxes(data, cfg)
    ctx.parts = PartStore(out_dir, _fingerprint(model, split, cfg, data, names), resume)
    done = set(ctx.parts.names())  # finished parts of an interrupted attack (resume)
    results, recons = _run_attacks(ctx, names, done, data, recogniser, region, quiet)
    floor_scores = _floor_scores(data, recogniser, region)
    best = strongest(results)
    report = {
        "run": None if run_dir is None else str(run_dir),
        "label": f"split {split}",
        "series": "unlabelled",
        "defense": None,
        "budget": None,
        **(facts or {}),
        "split": split,
        "accuracy": accuracy,
        "edge": edge,
        "strongest": best,
        "attack_failed": not best["converged"],
        "attacks": results,
        **floor_scores,  # mean_image, label_only (and label_only_mix)
        "recogniser": {
            "clean_accuracy": attack_accuracy(recogniser, data.eval_images, data.eval_labels),
            "chance": 1.0 / data.num_classes,
            "seconds": round(recogniser_s, 2),
        },
        "data": data.summary,
        "metric_note": METHOD_NOTE,
        "region_note": None if region is None else region[1],
        "grid": {"file": ATTACK_GRID, "rows": ["original", *recons]},
        "model_weights_sha256": meta.get("weights", {}).get("sha256"),
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }
    check_record(AttackResult, report, out_dir / ATTACK_FILE)  # what the report will read
    # attack.json and its grid are replaced as a pair (a kill never mixes old and new).
    replace_pair(
        out_dir,
        ATTACK_FILE,
        report,
        "grid",
        lambda path: _grid(path, data.eval_images, recons, cfg.grid_images),
    )
    ctx.parts.clear()  # attack.json holds everything the finished parts were for
    return report


def _own_accuracy_and_edge(
    model: BlockNet,
    bundle: DataBundle,
    split: int,
    input_shape: tuple[int, int, int],
    facts: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attacked model's own accuracy (its headline metric and all) and edge size.

    ``attack.json`` records both, so each point of the privacy-utility plane
    says what the privacy cost in accuracy and size without another file.
    """
    from patrol_compress.metrics.edge import edge_report
    from patrol_compress.train.evaluate import evaluate

    accuracy_all = evaluate(model, bundle)
    metric = "top1" if "top1" in accuracy_all else "rank1"
    edge = (facts or {}).get("edge")
    if edge is None:  # a defense passes the undefended edge's size (its wrappers hide convs)
        edge = edge_report(model, split, input_shape)
        edge.pop("per_block")
    return {"metric": metric, "value": accuracy_all[metric], "all": accuracy_all}, edge


def _run_attacks(
    ctx: AttackContext,
    names: list[str],
    done: set[str],
    data: AttackData,
    recogniser: torch.nn.Module,
    region: tuple[Any, str] | None,
    quiet: bool,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run each attack in turn; return its scored result and its reconstructions, by name.

    The plan is announced first (the parts ``done`` names are reused from
    ``ctx.parts``, not rerun), so a long job says up front what it will do;
    ``quiet`` keeps the progress lines off the console. Every attack must
    rebuild all the evaluation images: scores over different image sets do
    not compare (:func:`strongest`).
    """
    ctx.progress = progress = AttackProgress(None if quiet else _print_line)
    ctx.shared["will_run_blackbox"] = "blackbox" in names
    plan = [part for name in names for part in ATTACKS.get(name)().estimate(ctx, done)]
    progress.announce(plan, sorted(done))
    results: dict[str, Any] = {}
    recons: dict[str, torch.Tensor] = {}
    full_set = image_set(data.eval_images)
    for name in names:
        start = time.perf_counter()
        rec = ATTACKS.get(name)().run(ctx)
        seconds = time.perf_counter() - start
        if len(rec.images) != len(data.eval_images):
            raise AttackError(
                f"attack '{name}' reconstructed {len(rec.images)} of the "
                f"{len(data.eval_images)} evaluation images; every attack scores all of them"
            )
        recons[name] = rec.images
        scores = _score(data.eval_images, rec.images, data.eval_labels, recogniser, region)
        floor = attack_floor(data, len(rec.images))
        results[name] = {
            **scores,
            "image_set": full_set,
            "val_psnr": rec.info.get("val_psnr"),
            "converged": beats_floor(scores, floor),
            "floor": floor,
            "seconds": round(seconds, 2),
            "info": rec.info,
        }
        progress.say(
            f"{name}: {scores['psnr']:.2f} dB / SSIM {scores['ssim']:.3f} on "
            f"{len(rec.images)} evaluation images (validation {rec.info.get('val_psnr', 0):.2f} dB)"
        )
    return results, recons


def _floor_scores(
    data: AttackData, recogniser: torch.nn.Module, region: tuple[Any, str] | None
) -> dict[str, dict[str, Any]]:
    """The guesses that need no features (:func:`floor_guesses`), scored as the attacks
    are: what an attack must beat before its score means anything."""
    floors = floor_guesses(data)
    floor_scores: dict[str, dict[str, Any]] = {}
    for key, guess in floors.items():
        floor_scores[key] = _score(data.eval_images, guess, data.eval_labels, recogniser, region)
    return floor_scores


def _print_line(text: str) -> None:
    from patrol_compress.train.loop import console

    console.print(text, highlight=False, markup=False)


def _fingerprint(
    model: BlockNet, split: int, cfg: AttackConfig, data: AttackData, names: list[str]
) -> str:
    """What every finished part depends on (see :mod:`patrol_compress.attacks.parts`)."""
    from patrol_compress.attacks.parts import fingerprint, model_digest, tensor_digest

    artifact = cfg.adaptive.artifact
    manifest = None
    if "adaptive" in names and artifact is not None and (Path(artifact) / MANIFEST).is_file():
        from patrol_compress.io import sha256_file

        manifest = sha256_file(Path(artifact) / MANIFEST)
    return fingerprint(
        model=model_digest(model),
        split=split,
        config=cfg.model_dump(mode="json"),
        eval_images=tensor_digest(data.eval_images),
        attacker=data.summary,
        artifact_manifest=manifest,
        version=package_versions().get("patrol-compress"),
    )
