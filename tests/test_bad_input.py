"""Bad input through the real CLI: exit code 2, one line naming the field or file, nothing lost.

One test per kind of bad input (parametrized over its variants). Every case also
checks that what was on disk before is still there byte for byte: a user's file
in the output folder, a finished run, an export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner, Result

from patrol_compress.cli.app import app
from patrol_compress.models import build_model
from patrol_compress.models.saved import save_model_file
from patrol_compress.recipe import ModelConfig, parse_recipe

from .helpers import tiny_recipe_dict, write_recipe

runner = CliRunner()
NOTES = b"my own notes\n\x00\xff"  # a user's file, with bytes no text round trip keeps


# --------------------------------------------------------------------------- helpers


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def error_line(result: Result) -> str:
    """The contract: exit code 2 and exactly one non-empty output line, ``error: ...``."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    print(lines[0])  # shown with -s: the messages quoted in the issue
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def user_folder(path: Path) -> Path:
    """An output folder that already holds a user's file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_bytes(NOTES)
    return path


def only_notes(path: Path) -> bool:
    return [p.name for p in path.iterdir()] == ["notes.txt"] and (
        path / "notes.txt"
    ).read_bytes() == NOTES


def recipe_dict(tmp_path: Path, cache: Path, **patrol: Any) -> dict[str, Any]:
    """The tiny recipe with no PATROL/recovery epochs and one target epoch (seconds)."""
    data = tiny_recipe_dict(tmp_path, **{"epochs": 0, "recovery_epochs": 0, **patrol})
    data["data"]["cache_dir"] = str(cache)
    data["train"]["epochs"] = 1
    return data


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Module fixtures run outside conftest's per-test thread setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated-data cache for the module (generation is the slow part of a tiny run)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cache: Path, one_thread: None) -> Path:
    """A finished tiny prune run (split 4)."""
    from patrol_compress.pipeline import prune

    root = tmp_path_factory.mktemp("run")
    prune(parse_recipe(recipe_dict(root, cache)), quiet=True)
    return root / "run"


@pytest.fixture(scope="module")
def artifact(run_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """The run's ONNX export at split 4."""
    from patrol_compress.exporters import export_run

    out = tmp_path_factory.mktemp("export") / "onnx-split4-fp32"
    export_run(run_dir, 4, "onnx", out=out)
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run-copy"))


# --------------------------------------------------------------------------- recipes

RECIPE_CASES = {
    # case: (how to spoil the tiny recipe, words the one line must contain)
    "malformed-yaml": (None, "malformed YAML at line 2, column 9"),
    "unknown-key": ({"train": {"epocs": 3}}, "train.epocs: unknown key"),
    "wrong-type": ({"train": {"lr": "fast"}}, "train.lr: Input should be a valid number"),
    "out-of-range": (
        {"patrol": {"tau": -1}},
        "patrol.tau: Input should be greater than or equal to 0",
    ),
}


@pytest.mark.parametrize("command", ["validate", "prune"])
@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe(tmp_path: Path, cache: Path, command: str, case: str) -> None:
    spoil, words = RECIPE_CASES[case]
    path = tmp_path / "bad.yaml"
    if spoil is None:
        path.write_text("name: x\ntrain: a: b\n")
    else:
        data = recipe_dict(tmp_path, cache)
        for section, values in spoil.items():
            data[section].update(values)
        write_recipe(tmp_path, data, "bad.yaml")
    out = user_folder(tmp_path / "out")
    if command == "validate":
        result = cli("validate", path)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        line = lines[0]
    else:  # even --force must not touch anything when the recipe is bad
        line = error_line(cli("prune", path, "--out", out, "--force", "--quiet"))
    assert line.removeprefix("error: ").startswith(f"{path}: ") and words in line
    assert only_notes(out)


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("kind", "state", "words"),
    [
        ("imagefolder", "missing", "nowhere: dataset folder not found; expected the layout"),
        ("imagefolder", "empty", "empty/train: folder not found; expected the layout"),
        ("veri", "missing", "nowhere: dataset folder not found; expected image_train/"),
        ("veri", "empty", "empty/image_train: folder not found; expected image_train/"),
        ("veri-wild", "empty", "empty/images: folder not found; expected VeRi-Wild's"),
        ("fashion-mnist", "missing", "nowhere: Fashion-MNIST folder not found; install"),
        ("fashion-mnist", "empty", "train-images-idx3-ubyte.gz: Fashion-MNIST file not found"),
    ],
    ids=lambda v: v if " " not in v else "",  # kind-state
)
def test_missing_or_empty_dataset_folder(
    tmp_path: Path, cache: Path, kind: str, state: str, words: str
) -> None:
    root = tmp_path / ("nowhere" if state == "missing" else "empty")
    if state == "empty":
        root.mkdir()
    data = recipe_dict(tmp_path, cache)
    data["data"] = {"kind": kind, "root": str(root), "image_size": 32}
    out = user_folder(tmp_path / "out")
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", out, "--force", "--quiet")
    )
    assert str(root) in line and words in line
    assert (out / "notes.txt").read_bytes() == NOTES
    assert not (out / "target").exists()


def _image_dataset(root: Path, kind: str) -> Path:
    """A tiny dataset in which every training image is used in the first epoch, one corrupt.

    The corrupt file is never the first of its class/camera, so the sample grid
    (first image per cell) does not read it: the error comes from training.
    """

    def save(path: Path, shade: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (shade, 90, 255 - shade)).save(path)

    if kind == "imagefolder":  # 4 training images = one 2 x 2 batch
        for split, counts in (("train", 2), ("test", 1)):
            for c, name in enumerate(("a", "b")):
                for i in range(counts):
                    save(root / split / name / f"{i}.png", 60 * c + 10 * i)
        bad = root / "train" / "a" / "zz.jpg"
        (root / "train" / "a" / "1.png").unlink()
    else:  # veri: two identities with two images each: P=2, K=2 draws all four
        names = {
            "image_train": ["0002_c002_00000001_0", "0007_c001_00000003_0", "0007_c002_00000004_0"],
            "image_query": ["0050_c001_00000005_0"],
            "image_test": ["0050_c002_00000006_0", "0050_c003_00000007_0"],
        }
        for folder, stems in names.items():
            for n, stem in enumerate(stems):
                save(root / folder / f"{stem}.jpg", 30 * n)
        bad = root / "image_train" / "0002_c002_00000099_9.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a jpeg")
    return bad


@pytest.mark.parametrize(
    ("kind", "workers"),
    [("imagefolder", 0), ("veri", 0), ("imagefolder", 1)],
    ids=["imagefolder", "veri", "imagefolder-worker-process"],
)
def test_corrupt_image_in_dataset(tmp_path: Path, cache: Path, kind: str, workers: int) -> None:
    bad = _image_dataset(tmp_path / "data", kind)
    data = recipe_dict(tmp_path, cache)
    data["data"] = {"kind": kind, "root": str(tmp_path / "data"), "image_size": 32}
    data["train"].update(identities_per_batch=2, instances_per_identity=2, num_workers=workers)
    out = user_folder(tmp_path / "out")
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", out, "--force", "--quiet")
    )
    # A worker process's error arrives wrapped in torch's traceback text; still one line.
    assert line == f"error: {bad}: cannot read image (UnidentifiedImageError)"
    assert (out / "notes.txt").read_bytes() == NOTES


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    "case",
    [
        "recipe-split-9",
        "export-split-9",
        "export-split-0",
        "recipe-split-5",
    ],
)
def test_split_beyond_model_depth(tmp_path: Path, cache: Path, run_dir: Path, case: str) -> None:
    k = int(case.rsplit("-", 1)[1])
    if case.startswith("export"):
        before = snapshot(run_dir)
        line = error_line(cli("export", run_dir, "--split", k, "--target", "onnx"))
        assert f"--split {k} is out of range" in line and "has stages 1..4" in line
        assert str(run_dir) in line
        assert snapshot(run_dir) == before  # no export folder, nothing rewritten
        return
    # ResNet-18 has 4 stages; alphas for every edge stage, no budget: nothing else to trip on.
    lip = {"enabled": True, "alphas": [0.1] * k, "sigma": 0.1}
    data = recipe_dict(tmp_path, cache, split=k, budget=None, lipschitz=lip)
    out = user_folder(tmp_path / "out")
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", out, "--force", "--quiet")
    )
    assert "patrol.split" in line
    assert ("less than or equal to 8" if k > 8 else "stages 1..4") in line
    assert not (out / "target").exists()  # refused before any training
    assert (out / "notes.txt").read_bytes() == NOTES


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("budget", "granularity", "words"),
    [
        ({"params": 50}, "channel", "patrol.budget cannot be met at split 4"),
        ({"bytes": 4}, "channel", "patrol.budget cannot be met at split 4"),
        ({"params": 50}, "block", "patrol.budget cannot be met block-wise at split 4"),
    ],
    ids=["params", "bytes", "params-block-wise"],
)
def test_impossible_budget(
    tmp_path: Path, cache: Path, budget: dict[str, int], granularity: str, words: str
) -> None:
    data = recipe_dict(tmp_path, cache, budget=budget, granularity=granularity)
    out = user_folder(tmp_path / "out")
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", out, "--force", "--quiet")
    )
    assert words in line
    limit = budget.get("params", budget.get("bytes", 0) // 4)
    assert f"parameters > {limit}" in line  # the limit that cannot hold, and by how much
    assert "the narrowest legal edge" in line or "the edge still has" in line
    assert not (out / "target").exists()  # fails before training
    assert (out / "notes.txt").read_bytes() == NOTES


# --------------------------------------------------------------------------- checkpoints

OTHER_MODELS: dict[str, tuple[ModelConfig, int]] = {
    # name: (architecture, number of classes); the recipe's is resnet18 x0.125, small stem, 9
    "resnet34": (ModelConfig(arch="resnet34", width=0.125, stem="small"), 9),
    "wider": (ModelConfig(width=0.25, stem="small"), 9),
    "narrower": (ModelConfig(width=0.0625, stem="small"), 9),
    "other-stem": (ModelConfig(width=0.125, stem="imagenet"), 9),
    "other-classes": (ModelConfig(width=0.125, stem="small"), 8),
}


@pytest.mark.parametrize(
    ("field", "other", "words"),
    [
        ("checkpoint", "resnet34", "96 unexpected keys (first: layer1.2."),
        (
            "checkpoint",
            "wider",
            "'conv1.weight' has shape (16, 3, 3, 3), the model's architecture expects",
        ),
        (
            "checkpoint",
            "other-stem",
            "'conv1.weight' has shape (8, 3, 7, 7), the model's architecture expects",
        ),
        ("checkpoint", "other-classes", "'head.classifier.weight' has 8 classes, the model has 9"),
        ("checkpoint", "narrower", "expects (8, 3, 3, 3)"),
        ("pretrained", "resnet34", "96 unexpected"),
        ("pretrained", "wider", "(16,), model expects (8,)"),
    ],
    ids=lambda v: v if " " not in v else "",  # field-model
)
def test_checkpoint_of_another_architecture(
    tmp_path: Path, cache: Path, field: str, other: str, words: str
) -> None:
    cfg, classes = OTHER_MODELS[other]
    weights = tmp_path / f"{other}.safetensors"
    save_model_file(weights, build_model(cfg, classes))
    data = recipe_dict(tmp_path, cache)
    if field == "checkpoint":
        data["train"]["checkpoint"] = str(weights)
    else:
        data["model"]["pretrained"] = str(weights)
    out = user_folder(tmp_path / "out")
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", out, "--force", "--quiet")
    )
    assert str(weights) in line and words in line
    assert "from another model" in line or field == "pretrained"
    assert (out / "notes.txt").read_bytes() == NOTES
    assert not (out / "target" / "model.safetensors").exists()


# A model.json that claims a *wider* network than its weights is indistinguishable from a
# pruned run (pruning only narrows layers) and loads as the weights' shapes say.
MODEL_JSON_EDITS: dict[str, tuple[dict[str, Any], str]] = {
    # model.json edit: words in the error (the weights file is always named)
    "arch": ({"model": {"arch": "resnet34"}}, "missing keys (first: layer1.2."),
    "narrower": ({"model": {"width": 1 / 64}}, "which does not fit the architecture's"),
    "stem": ({"model": {"stem": "imagenet"}}, "has kernel (3, 3), the architecture's is (7, 7)"),
    "classes": ({"num_classes": 12}, "'head.classifier.weight' has 9 classes, the model has 12"),
    "in-channels": ({"in_channels": 1}, "'conv1.weight' has shape ("),
    "sha256": ({"weights": {"sha256": "0" * 64}}, "sha256 does not match"),
}


@pytest.mark.parametrize("edit", list(MODEL_JSON_EDITS))
def test_run_whose_model_json_disagrees_with_its_weights(
    tmp_path: Path, run_dir: Path, edit: str
) -> None:
    run = copy_run(run_dir, tmp_path)
    changes, words = MODEL_JSON_EDITS[edit]
    meta = json.loads((run / "model.json").read_text())
    for key, value in changes.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    (run / "model.json").write_text(json.dumps(meta))
    before = snapshot(run)
    line = error_line(cli("export", run, "--target", "onnx"))
    assert f"{run / 'model.safetensors'}: " in line and words in line
    assert snapshot(run) == before


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize("change", ["flip-a-byte", "append-a-byte"])
def test_artifact_no_longer_matches_its_manifest(
    tmp_path: Path, artifact: Path, change: str
) -> None:
    copy = Path(shutil.copytree(artifact, tmp_path / "artifact"))
    blob = bytearray((copy / "edge.onnx").read_bytes())
    if change == "flip-a-byte":
        blob[len(blob) // 2] ^= 0x01
    else:
        blob.append(0)
    (copy / "edge.onnx").write_bytes(bytes(blob))
    before = snapshot(copy)
    report = tmp_path / "bench.json"
    line = error_line(cli("bench", copy, "--batch", "1", "--runs", "1", "--json", report))
    assert f"{copy / 'edge.onnx'}: " in line
    assert "sha256 does not match manifest.json" in line or "manifest.json says" in line
    assert snapshot(copy) == before and not report.exists()


# --------------------------------------------------------------------------- existing output


@pytest.mark.parametrize("what", ["user-folder-prune", "user-folder-train", "run", "export"])
def test_existing_output_is_refused_without_force(
    tmp_path: Path, cache: Path, run_dir: Path, what: str
) -> None:
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path, cache))
    if what == "run":
        out = copy_run(run_dir, tmp_path)
        args: tuple[object, ...] = ("prune", recipe, "--out", out)
        words = "output directory holds a run; pass --resume to continue it or --force"
    elif what == "export":
        out = user_folder(tmp_path / "exp")
        args = ("export", run_dir, "--target", "onnx", "--split", "2", "--out", out)
        words = "already exists; pass --force to replace its export files"
    else:
        out = user_folder(tmp_path / "out")
        args = (what.rsplit("-", 1)[1], recipe, "--out", out)
        words = "output directory exists and is not empty; pass --resume to continue it or --force"
    before = snapshot(out)
    run_before = snapshot(run_dir)
    line = error_line(cli(*args))
    assert line == f"error: {out}: {words} to overwrite" or line == f"error: {out} {words}"
    assert snapshot(out) == before and snapshot(run_dir) == run_before


@pytest.mark.parametrize(
    "what",
    [
        "user-folder",
        "run",
        "export",
        "run-subfolder",
    ],
)
def test_force_never_deletes_files_it_did_not_write(
    tmp_path: Path, cache: Path, run_dir: Path, what: str
) -> None:
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path, cache))
    if what == "export":
        out = user_folder(tmp_path / "exp")
        args: tuple[object, ...] = ("export", run_dir, "--target", "onnx", "--split", "2")
        args += ("--out", out, "--force")
        notes = out / "notes.txt"
    else:
        out = tmp_path / "out"
        if what.startswith("run"):
            out = Path(shutil.copytree(run_dir, out))
        sub = out / "export" if what == "run-subfolder" else out
        notes = user_folder(sub) / "notes.txt"
        args = ("prune", recipe, "--out", out, "--force", "--quiet")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert notes.read_bytes() == NOTES


@pytest.mark.parametrize(
    "bad",
    [
        "recipe",
        "budget",
        "dataset",
        "pk-batch",
    ],
)
def test_force_over_a_run_with_bad_input_keeps_the_run(
    tmp_path: Path, cache: Path, run_dir: Path, bad: str
) -> None:
    run = copy_run(run_dir, tmp_path)
    before = snapshot(run)
    data = recipe_dict(tmp_path, cache)
    if bad == "recipe":
        data["patrol"]["tau"] = -1
    elif bad == "budget":
        data["patrol"]["budget"] = {"params": 50}
    elif bad == "pk-batch":  # issue 12 item 2: more identities per batch than the data has
        data["train"]["identities_per_batch"] = 40
    else:
        data["data"] = {"kind": "imagefolder", "root": str(tmp_path / "nowhere")}
    line = error_line(
        cli("prune", write_recipe(tmp_path, data), "--out", run, "--force", "--quiet")
    )
    assert bad != "pk-batch" or "train.identities_per_batch: a P x K batch needs" in line
    assert snapshot(run) == before


def test_recipe_helper_is_valid(tmp_path: Path, cache: Path) -> None:
    """Guard for the cases above: the unspoilt recipe passes validation."""
    path = write_recipe(tmp_path, recipe_dict(tmp_path, cache))
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 1
    result = cli("validate", path)
    assert result.exit_code == 0 and result.output.strip() == f"{path}: ok"


# --------------------------------------------------------------------------- issue 12: red team
# One test (or parametrized group) per item of issue 12; each fails without its fix.


# item 1: two jobs on one run folder ------------------------------------------------------


@pytest.mark.parametrize("command", ["prune-resume", "prune-force", "export", "attack", "defend"])
def test_a_second_job_on_a_locked_run_is_refused(
    tmp_path: Path, cache: Path, run_dir: Path, command: str
) -> None:
    """While one process works in a run folder, any other job writing into it exits 2."""
    from patrol_compress.locking import folder_lock

    run = copy_run(run_dir, tmp_path)
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    args: dict[str, tuple[object, ...]] = {
        "prune-resume": ("prune", recipe, "--out", run, "--resume", "--quiet"),
        "prune-force": ("prune", recipe, "--out", run, "--force", "--quiet"),
        "export": ("export", run, "--target", "onnx", "--split", "2"),
        "attack": ("attack", run),
        "defend": ("defend", run),
    }
    before = snapshot(run)
    with folder_lock(run):  # stands for another process's job (flock excludes any other open)
        line = error_line(cli(*args[command]))
    assert line == (
        f"error: {run}: another patrol-compress process is working in this run folder; "
        "wait for it to finish (or stop it), then retry"
    )
    assert snapshot(run) == before


def test_the_run_lock_goes_when_its_process_dies(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves no stale lock (the kernel drops flocks)."""
    import subprocess
    import sys

    from patrol_compress.errors import RunLockedError
    from patrol_compress.locking import acquire

    code = (
        "import os, sys; from pathlib import Path; from patrol_compress.locking import acquire; "
        f"acquire(Path({str(tmp_path)!r})); print('locked', flush=True); sys.stdin.readline(); "
        "os.kill(os.getpid(), 9)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError):
        acquire(tmp_path)
    holder.stdin.write("die\n")
    holder.stdin.close()
    assert holder.wait(timeout=60) == -9
    acquire(tmp_path).release()


# item 5: attack and bench --json overwrote earlier results --------------------------------


def test_attack_refuses_to_overwrite_an_earlier_attack(tmp_path: Path, run_dir: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    (run / "attack.json").write_bytes(NOTES)
    before = snapshot(run)
    line = error_line(cli("attack", run))
    assert line == (
        f"error: {run / 'attack.json'}: an attack's results are already here; "
        "pass --force to replace them or --out to write elsewhere"
    )
    assert snapshot(run) == before


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_bench_json_refuses_an_existing_path(tmp_path: Path, artifact: Path, existing: str) -> None:
    report = tmp_path / "bench.json"
    if existing == "file":
        report.write_bytes(NOTES)
        words = "already exists; pass --force to replace it"
    else:
        report.mkdir()
        words = "--json needs a file name, found a folder"
    line = error_line(cli("bench", artifact, "--batch", "1", "--runs", "1", "--json", report))
    assert line == f"error: {report}: {words}" + (
        " or choose another --json file" if existing == "file" else ""
    )
    assert existing == "folder" or report.read_bytes() == NOTES


def test_bench_json_force_replaces_the_file(tmp_path: Path, artifact: Path) -> None:
    report = tmp_path / "bench.json"
    report.write_bytes(NOTES)
    args = ("bench", artifact, "--batch", "1", "--runs", "1", "--warmup", "0", "--json", report)
    result = cli(*args, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["runs"] == 1


# item 3: bench and run loaders read only files they verified, inside their folder -------


def _relist(folder: Path, *names: str) -> None:
    """Rewrite manifest.json's entries of ``names`` to the files' current sha256 and size."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in names:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed"])
def test_bench_loads_onnx_external_data_only_when_listed(
    tmp_path: Path, artifact: Path, listed: bool
) -> None:
    """Weights moved into an unlisted weights.bin (and set to 1e30) must never be timed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    copy = Path(shutil.copytree(artifact, tmp_path / "artifact"))
    model = onnx.load(str(copy / "edge.onnx"))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            huge = np.full(numpy_helper.to_array(init).shape, 1e30, dtype=np.float32)
            init.CopyFrom(numpy_helper.from_array(huge, init.name))
    onnx.save_model(
        model,
        str(copy / "edge.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    _relist(copy, "edge.onnx", *(["weights.bin"] if listed else []))
    args = ("bench", copy, "--batch", "1", "--runs", "1", "--warmup", "0")
    if listed:  # verified like every other file: it may be loaded
        assert cli(*args).exit_code == 0
        return
    line = error_line(cli(*args))
    assert line.startswith(f"error: {copy / 'edge.onnx'}: onnxruntime cannot load it (")
    assert "needs files manifest.json does not list (external data)" in line


def test_bench_refuses_a_symlink_leading_out_of_the_artifact(
    tmp_path: Path, artifact: Path
) -> None:
    copy = Path(shutil.copytree(artifact, tmp_path / "artifact"))
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "edge.onnx", outside)
    (copy / "edge.onnx").symlink_to(outside)  # same bytes: the checksum alone would pass
    line = error_line(cli("bench", copy, "--batch", "1", "--runs", "1"))
    assert line == (
        f"error: {copy / 'edge.onnx'}: a link to {outside}, which is outside the artifact "
        "folder; refusing to load it"
    )


@pytest.mark.parametrize("name", ["../stolen.safetensors", "/tmp/stolen.safetensors", "link"])
def test_model_json_cannot_name_weights_outside_the_run(
    tmp_path: Path, run_dir: Path, name: str
) -> None:
    run = copy_run(run_dir, tmp_path)
    stolen = tmp_path / "stolen.safetensors"
    shutil.copy(run / "model.safetensors", stolen)
    if name == "link":
        (run / "link").symlink_to(stolen)
    meta = json.loads((run / "model.json").read_text())
    meta["weights"]["file"] = name
    (run / "model.json").write_text(json.dumps(meta))
    line = error_line(cli("export", run, "--target", "onnx"))
    assert line.startswith(f"error: {run / 'model.json'}: names ")
    assert "outside" in line
    assert not (run / "export").exists()


@pytest.mark.parametrize("name", ["../../stolen.safetensors", "link"])
def test_checkpoint_last_json_cannot_name_a_file_outside_its_folder(
    tmp_path: Path, name: str
) -> None:
    from patrol_compress.errors import ArtifactError
    from patrol_compress.train.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path / "run" / "checkpoints" / "patrol"
    model = torch.nn.Linear(2, 2)
    save_checkpoint(folder, 1, {"m": model}, {})
    stolen = tmp_path / "stolen.safetensors"
    shutil.copy(folder / "epoch-0001.safetensors", stolen)
    if name == "link":
        (folder / "link").symlink_to(stolen)
    meta = json.loads((folder / "last.json").read_text())
    meta["file"] = name
    (folder / "last.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="outside"):
        load_checkpoint(folder, {"m": model}, {})


# item 4: --force removed a user's own files with our suffixes --------------------------


def test_force_removes_only_the_files_we_recorded(
    tmp_path: Path, cache: Path, run_dir: Path
) -> None:
    run = copy_run(run_dir, tmp_path)
    export = run / "export" / "onnx-split2-fp32"
    assert cli("export", run, "--target", "onnx", "--split", "2").exit_code == 0
    mine = [
        run / sub / f"mine{suffix}"
        for sub in ("export", "target", "patrol", "defenses", "checkpoints")
        for suffix in (".json", ".yaml", ".png", ".safetensors")
    ]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(NOTES)
    stale = run / "target" / ".patrol-compress-tmp.model.json.abcd1234.tmp"  # a killed writer's
    stale.write_bytes(b"half")
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    result = cli("prune", recipe, "--out", run, "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert all(path.read_bytes() == NOTES for path in mine)
    assert not export.exists()  # the old run's export was ours: gone
    assert not stale.exists()
    assert (run / "target" / "model.safetensors").is_file()  # rewritten by the new run


# item 7: bounded YAML --------------------------------------------------------------------

BILLION_LAUGHS = "name: lol\nseed: 0\n" + "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["train: {lr: *a8}"]
)


@pytest.mark.parametrize("command", ["validate", "prune"])
@pytest.mark.parametrize("case", ["billion-laughs", "deep-nesting", "huge-file"])
def test_yaml_bombs_fail_fast_in_one_line(
    tmp_path: Path, command: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alias expansion, nesting and size are bounded before anything walks the value."""
    path = tmp_path / "bomb.yaml"
    if case == "billion-laughs":  # 9^9 values from ~500 bytes
        path.write_text(BILLION_LAUGHS)
        words = "expands to more than 100,000 values"
    elif case == "deep-nesting":
        path.write_text("name: deep\ntrain: " + "[" * 5000 + "]" * 5000 + "\n")
        words = "nests"
    else:
        path.write_text("name: big\n# " + "x" * (2 << 20) + "\n")
        words = "a recipe is at most 1,048,576"
    out = user_folder(tmp_path / "out")
    args = ("validate", path) if command == "validate" else ("prune", path, "--out", out)
    result = cli(*args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output[:500]
    assert str(path) in lines[0] and words in lines[0] and len(lines[0]) < 300
    assert only_notes(out)


def test_anchors_and_aliases_of_normal_size_still_work(tmp_path: Path, cache: Path) -> None:
    data = recipe_dict(tmp_path, cache)
    text = yaml.safe_dump(data).replace("mask_lr: 0.005", "mask_lr: &rate 0.005")
    path = tmp_path / "anchored.yaml"
    path.write_text(text.replace("  lr: 0.003", "  lr: *rate"))
    assert "*rate" in path.read_text()
    result = cli("validate", path)
    assert result.exit_code == 0, result.output


def test_a_long_bad_value_is_quoted_short(tmp_path: Path, cache: Path) -> None:
    data = recipe_dict(tmp_path, cache)
    data["train"]["lr"] = "x" * 100_000
    data["train"]["warmup_epochs"] = list(range(20_000))
    line = error_line(cli("prune", write_recipe(tmp_path, data), "--force", "--quiet"))
    assert "train.lr" in line and len(line) < 400


# item 9: --threads beyond the usable cores ---------------------------------------------


@pytest.mark.parametrize("command", ["prune", "train", "bench"])
@pytest.mark.parametrize("threads", ["0", "above", "100000"])
def test_threads_beyond_the_usable_cores_is_one_line(
    tmp_path: Path, cache: Path, artifact: Path, command: str, threads: str
) -> None:
    from patrol_compress.machine import usable_cores

    cores = usable_cores()
    value = str(cores + 1) if threads == "above" else threads
    out = user_folder(tmp_path / "out")
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path, cache))
    target: tuple[object, ...] = (artifact,) if command == "bench" else (recipe, "--out", out)
    line = error_line(cli(command, *target, "--threads", value))
    assert (
        line
        == f"error: --threads {value}: expected 1..{cores} (the CPU cores this process may use)"
    )
    assert only_notes(out)


# item 10: resume with another recipe once recipe.resolved.yaml is gone ------------------


@pytest.mark.parametrize("recipe_file", ["kept", "deleted"])
def test_resume_with_a_changed_recipe_is_refused(
    tmp_path: Path, run_dir: Path, recipe_file: str
) -> None:
    run = copy_run(run_dir, tmp_path)
    data = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    data["train"]["lr"] = data["train"]["lr"] * 2  # a learning rate changed half-way
    changed = write_recipe(tmp_path, data, "changed.yaml")
    if recipe_file == "deleted":
        (run / "recipe.resolved.yaml").unlink()
    before = snapshot(run)
    line = error_line(cli("prune", changed, "--out", run, "--resume", "--quiet"))
    assert line == (
        f"error: {run}: this run was started with a different recipe; use a new --out or --force"
    )
    assert snapshot(run) == before


def test_a_run_from_before_a_schema_field_resumes_and_keeps_its_recipe_file(
    tmp_path: Path, run_dir: Path
) -> None:
    """A run whose resolved recipe predates a field (here ``patrol.uplink.noise``, at its
    default) resumes after the upgrade: today's schema reads it to the same recipe. Its
    file and the hashes its stages recorded stay, so a second resume works too."""
    import hashlib
    import json

    run = copy_run(run_dir, tmp_path)
    data = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    del data["patrol"]["uplink"]["noise"]
    older = yaml.safe_dump(data, sort_keys=False)
    (run / "recipe.resolved.yaml").write_text(older)
    stages = json.loads((run / "stages.json").read_text())
    digest = hashlib.sha256(older.encode("utf-8")).hexdigest()
    for record in stages.values():
        record["recipe_sha256"] = digest
    (run / "stages.json").write_text(json.dumps(stages))
    today = shutil.copy(run_dir / "recipe.resolved.yaml", tmp_path / "today.yaml")
    for _ in range(2):
        result = cli("prune", today, "--out", run, "--resume", "--quiet")
        assert result.exit_code == 0, result.output
        assert (run / "recipe.resolved.yaml").read_text() == older
        recorded = json.loads((run / "stages.json").read_text())
        assert {r["recipe_sha256"] for r in recorded.values()} == {digest}


def test_corrupt_stages_json_is_one_line(tmp_path: Path, run_dir: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    (run / "stages.json").write_text('{"data": {"seconds": 1')
    recipe = shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml")
    line = error_line(cli("prune", recipe, "--out", run, "--resume", "--quiet"))
    assert line.startswith(f"error: {run / 'stages.json'}: not valid JSON (")


# items 11 and 12 (minor) and the papercuts ----------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("patrol", "tau", ".nan"),
        ("patrol", "mask_lr", ".inf"),
        ("lipschitz", "sigma", ".nan"),
        ("top", "seed", str(2**80)),
        ("top", "seed", str(-(2**80))),
    ],
    ids=["tau-nan", "mask_lr-inf", "sigma-nan", "seed-2**80", "seed-minus-2**80"],
)
def test_non_finite_or_out_of_range_numbers_in_a_recipe(
    tmp_path: Path, cache: Path, section: str, key: str, value: str
) -> None:
    data = recipe_dict(tmp_path, cache)
    marker = "__VALUE__"
    if section == "top":
        data[key] = marker
    elif section == "lipschitz":
        data["patrol"]["lipschitz"][key] = marker
    else:
        data[section][key] = marker
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data).replace(f"'{marker}'", value))
    out = user_folder(tmp_path / "out")
    line = error_line(cli("prune", path, "--out", out, "--force", "--quiet"))
    assert f"{key}: " in line
    assert only_notes(out)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
def test_uplink_must_be_a_finite_positive_number(artifact: Path, value: str) -> None:
    line = error_line(cli("bench", artifact, "--batch", "1", "--runs", "1", "--uplink-mbps", value))
    assert "(--uplink-mbps) must be a finite number > 0" in line


def test_missing_extra_keeps_its_brackets_and_names_the_gpu(run_dir: Path) -> None:
    """rich markup ate '[tensorrt]' from the pip command."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    line = error_line(cli("export", run_dir, "--target", "trt", "--split", "2"))
    assert "pip install 'patrol-compress[tensorrt]'" in line
    assert "NVIDIA GPU with CUDA" in line


def test_version_flag() -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.output.startswith("patrol-compress ")


def test_sigterm_says_so_and_releases_the_run(tmp_path: Path, cache: Path) -> None:
    """SIGTERM during training: one line, exit 143, and the next --resume finishes the run."""
    import os
    import subprocess
    import sys

    from patrol_compress.train.faults import FAULT_ENV

    data = recipe_dict(tmp_path, cache)
    data["train"]["epochs"] = 2
    recipe = write_recipe(tmp_path, data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "patrol_compress", "train", str(recipe), "--out", str(out)]
    cmd += ["--quiet", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    died = subprocess.run(
        cmd, env={**env, FAULT_ENV: "train:2:1:term"}, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in died.stderr.splitlines() if line.strip()]
    assert died.returncode == 143, died.stderr
    assert lines == ["terminated (SIGTERM); finished stages are kept, rerun with --resume"]
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["prune", "export"])
def test_out_that_is_a_file_is_one_line(
    tmp_path: Path, cache: Path, run_dir: Path, command: str
) -> None:
    target = tmp_path / "taken"
    target.write_bytes(NOTES)
    if command == "prune":
        args: tuple[object, ...] = ("prune", write_recipe(tmp_path, recipe_dict(tmp_path, cache)))
    else:
        args = ("export", run_dir, "--target", "onnx", "--split", "2")
    line = error_line(cli(*args, "--out", target, "--force"))
    assert str(target) in line and "is not a folder" in line
    assert target.read_bytes() == NOTES
