"""A run folder is data, never code; --force, --resume and locks stay inside what we wrote.

The cases of issue 25, each as a hostile user would try it: a run folder that
names code, YAML that expands to megabytes, a malformed ``PATROL_FAULT`` under
``--force``, symlinks and look-alike temporary names inside a run, crashes in
the middle of a ``--force`` replacement, writers that dodge the run's lock, and
an adaptive attack pointed at an artifact of another model. Every case checks
the one-line contract (exit code 2 from the CLI, a ``PatrolError`` from the
API) and that nothing already written was lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from re import escape as re_escape
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from patrol_compress.cli.app import app
from patrol_compress.recipe import dump_recipe, parse_recipe

from .helpers import tiny_recipe_dict, write_recipe

runner = CliRunner()
NOTES = b"my own notes\n"


# --------------------------------------------------------------------------- helpers


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def error_line(result: Result) -> str:
    """The contract: exit code 2 and exactly one non-empty output line, ``error: ...``."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (links not followed; the lock
    file, which holds nothing, left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".patrol-compress.lock"
    }


def recipe_dict(tmp_path: Path, cache: Path, **patrol: Any) -> dict[str, Any]:
    """The tiny recipe, privacy terms off, one epoch of each stage (seconds)."""
    off = {"lipschitz": {"enabled": False}, "adversarial": {"enabled": False}}
    data = tiny_recipe_dict(tmp_path, **{"epochs": 1, "recovery_epochs": 1, **off, **patrol})
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
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cache: Path, one_thread: None) -> Path:
    """A finished tiny prune run (split 4), exported to ONNX at split 2."""
    from patrol_compress.exporters import export_run
    from patrol_compress.pipeline import prune

    root = tmp_path_factory.mktemp("run")
    prune(parse_recipe(recipe_dict(root, cache)), quiet=True)
    export_run(root / "run", 2, "onnx")
    return root / "run"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run-copy", symlinks=True))


def same_recipe(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(run / "recipe.resolved.yaml", tmp_path / "same.yaml"))


# --------------------------------------------------------------------------- item 3: PATROL_FAULT


@pytest.mark.parametrize("command", ["prune", "train"])
@pytest.mark.parametrize("spec", ["patrol:x:1", "recovery:1:1"])
def test_malformed_fault_with_force_keeps_the_finished_run(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, command: str, spec: str
) -> None:
    """The variable is parsed in the preflight, before --force clears anything."""
    from patrol_compress.train.faults import FAULT_ENV

    run = copy_run(run_dir, tmp_path)
    recipe = same_recipe(run, tmp_path)
    before = snapshot(run)
    monkeypatch.setenv(FAULT_ENV, spec)
    line = error_line(cli(command, recipe, "--out", run, "--force", "--quiet"))
    assert FAULT_ENV in line
    assert snapshot(run) == before


def test_recover_fault_fires_in_the_plain_recovery(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the privacy terms off (the shipped recipes) recovery still runs as ``recover``."""
    from patrol_compress.pipeline import prune
    from patrol_compress.train.faults import FAULT_ENV, InjectedFault

    recipe = parse_recipe(recipe_dict(tmp_path, cache))
    assert not recipe.patrol.lipschitz.enabled and not recipe.patrol.adversarial.enabled
    monkeypatch.setenv(FAULT_ENV, "recover:1:1:raise")
    with pytest.raises(InjectedFault, match="recover epoch 1 step 1"):
        prune(recipe, quiet=True)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "remove" in stages and "recover" not in stages


# --------------------------------------------------------------------------- item 2: YAML bytes


def _aliased_string(copies: int, size: int = 100_000) -> str:
    """``copies`` aliases of one ``size``-byte string in model.factory_kwargs (~``size`` B file)."""
    lines = ["name: big", "model:", "  arch: custom", '  factory: "pkg.nets:build"']
    lines += ["  factory_kwargs:", f"    k0: &s {'x' * size}"]
    lines += [f"    k{i}: *s" for i in range(1, copies)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["validate", "prune"])
def test_aliases_of_a_large_string_are_bounded_in_bytes(tmp_path: Path, command: str) -> None:
    """300 aliases of 100 KB: a 100 KB file that stands for 30 MB; refused before validation."""
    path = tmp_path / "big.yaml"
    path.write_text(_aliased_string(300))
    assert path.stat().st_size < 110_000
    out = tmp_path / "out"
    args = ("validate", path) if command == "validate" else ("prune", path, "--out", out)
    result = cli(*args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output[:300]
    assert str(path) in lines[0] and "expands to more than 1,048,576 bytes" in lines[0]
    assert not out.exists()


def test_a_few_aliases_of_a_short_value_still_load(tmp_path: Path) -> None:
    from patrol_compress.yamlio import load_yaml_text

    data = load_yaml_text(_aliased_string(5, 1000), "ok.yaml")
    assert isinstance(data, dict) and len(data["model"]["factory_kwargs"]) == 5


@pytest.mark.parametrize("field", ["factory_kwargs", "factory"])
def test_factory_fields_need_arch_custom(tmp_path: Path, cache: Path, field: str) -> None:
    data = recipe_dict(tmp_path, cache)
    data["model"][field] = {"depth": 3} if field == "factory_kwargs" else "pkg.nets:build"
    out = tmp_path / "out"
    line = error_line(cli("prune", write_recipe(tmp_path, data), "--out", out, "--quiet"))
    assert f"model.{field} is only for arch 'custom'; arch is 'resnet18'" in line
    assert not out.exists()


def test_factory_kwargs_from_a_dict_must_be_json_values(tmp_path: Path, cache: Path) -> None:
    """A dict recipe could carry any Python object, which no recipe file can write back."""
    from patrol_compress import api
    from patrol_compress.errors import RecipeError

    data = recipe_dict(tmp_path, cache)
    data["model"] = {"arch": "custom", "factory": "pkg.nets:build", "factory_kwargs": {"a": {1, 2}}}
    with pytest.raises(RecipeError, match=r"model\.factory_kwargs\.a"):
        api.as_recipe(data)


# --------------------------------------------------------------------------- item 1: no code


EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")

def build(**kwargs):
    Path({marker!r}).write_text("called")
"""


@pytest.fixture
def custom_run(tmp_path: Path) -> Path:
    """A saved custom-architecture model (the MobileNet-style test CNN), split 2."""
    from patrol_compress.models.saved import save_run_model

    from .helpers import tiny_mobilenet_net

    model = tiny_mobilenet_net()
    info = {
        "model": {
            "arch": "custom",
            "factory": "patrol_compress.testing.tiny:tiny_mobilenet",
            "blocks": {
                "stem": ["stem_conv", "stem_bn", "stem_act"],
                "stages": [["s1"], ["s2"], ["s3"]],
            },
        },
        "num_classes": 6,
        "in_channels": 3,
        "task": "reid",
        "image_size": 32,
        "split": 2,
    }
    save_run_model(tmp_path / "custom", model, info)
    recipe = tiny_recipe_dict(tmp_path, split=2, budget=None, lipschitz={"enabled": False})
    recipe["model"] = info["model"]
    (tmp_path / "custom" / "recipe.resolved.yaml").write_text(dump_recipe(parse_recipe(recipe)))
    return tmp_path / "custom"


def _name_factory(run: Path, spec: str) -> None:
    meta = json.loads((run / "model.json").read_text())
    meta["model"]["factory"] = spec
    (run / "model.json").write_text(json.dumps(meta))


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path whose import (or call) writes a marker file: code that ran."""
    import sys

    marker = tmp_path / "marker"
    name = "evil_nets_issue25"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:build", marker


@pytest.mark.parametrize("command", ["export", "attack", "defend"])
def test_a_run_folder_naming_a_factory_runs_no_code(
    custom_run: Path, evil_module: tuple[str, Path], command: str
) -> None:
    spec, marker = evil_module
    _name_factory(custom_run, spec)
    before = snapshot(custom_run)
    extra = ("--target", "onnx") if command == "export" else ()
    line = error_line(cli(command, custom_run, *extra))
    assert f"{custom_run / 'model.json'}: the saved model is built by code" in line
    assert "--trust-model-code" in line and spec in line
    assert not marker.exists()
    assert snapshot(custom_run) == before


def test_load_model_runs_no_code_unless_allowed(
    custom_run: Path, evil_module: tuple[str, Path]
) -> None:
    from patrol_compress import api
    from patrol_compress.errors import ModelError

    spec, marker = evil_module
    _name_factory(custom_run, spec)
    with pytest.raises(ModelError, match="trust_model_code=True"):
        api.load_model(custom_run)
    with pytest.raises(ModelError, match="not the factory this job uses"):
        api.load_model(custom_run, factory="patrol_compress.testing.tiny:tiny_mobilenet")
    with pytest.raises(ModelError):
        api.partitions(custom_run)
    assert not marker.exists()
    with pytest.raises(ModelError, match="returned NoneType"):  # allowed: now it runs
        api.load_model(custom_run, trust_model_code=True)
    assert marker.read_text() == "called"


@pytest.mark.parametrize(
    "spec", ["torch.hub:load", "os:system", "subprocess:run", "builtins:exec", "mods._x:f"]
)
def test_code_running_modules_are_refused_even_when_trusted(custom_run: Path, spec: str) -> None:
    _name_factory(custom_run, spec)
    line = error_line(cli("export", custom_run, "--target", "onnx", "--trust-model-code"))
    assert line.startswith(f"error: {custom_run / 'model.json'}: model.factory")
    assert "refused" in line or "public names" in line
    assert not (custom_run / "export").exists()


def test_a_trusted_or_matching_factory_still_loads(custom_run: Path) -> None:
    from patrol_compress import api
    from patrol_compress.testing.tiny import tiny_mobilenet

    assert api.load_model(custom_run, factory="patrol_compress.testing.tiny:tiny_mobilenet")
    assert api.load_model(custom_run, factory=tiny_mobilenet)
    result = cli("export", custom_run, "--target", "onnx", "--trust-model-code")
    assert result.exit_code == 0, result.output
    assert (custom_run / "export" / "onnx-split2-fp32" / "manifest.json").is_file()


# --------------------------------------------------------------------------- item 4: symlinks


def test_force_never_deletes_through_a_symlinked_folder(tmp_path: Path, run_dir: Path) -> None:
    """A ledger entry ``link/victim.txt`` with ``link -> outside/`` is not the run's file."""
    from patrol_compress.rundir import clear_run

    run = copy_run(run_dir, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(NOTES)
    (run / "link").symlink_to(outside)
    with open(run / ".patrol-compress.written", "a") as ledger:
        ledger.write("link/victim.txt\nlink/../outside/victim.txt\n.patrol-compress.lock\n")
    clear_run(run)
    assert victim.read_bytes() == NOTES
    assert (run / "link").is_symlink()
    assert not (run / "model.safetensors").exists()  # the run's own files did go


def test_force_with_checkpoints_on_another_disk_finishes(tmp_path: Path, run_dir: Path) -> None:
    """checkpoints/ linked elsewhere: --force must not die half-way (it did, on the rmdir walk)."""
    run = copy_run(run_dir, tmp_path)
    disk = tmp_path / "disk2" / "ckpts"
    disk.parent.mkdir()
    shutil.move(run / "checkpoints", disk)
    (run / "checkpoints").symlink_to(disk)
    outside = snapshot(disk)
    assert outside  # the earlier run's checkpoints lie there
    result = cli("prune", same_recipe(run, tmp_path), "--out", run, "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints").is_symlink() and disk.is_dir()
    assert (run / "metrics.json").is_file()


def test_force_of_a_legacy_run_keeps_a_linked_folder(tmp_path: Path, run_dir: Path) -> None:
    """A run from before the ledger: its linked checkpoints/ stays a link, its target intact."""
    from patrol_compress.rundir import clear_run

    run = copy_run(run_dir, tmp_path)
    (run / ".patrol-compress.written").unlink()
    disk = tmp_path / "disk2"
    shutil.move(run / "checkpoints", disk)
    (run / "checkpoints").symlink_to(disk)
    outside = snapshot(disk)
    clear_run(run)
    assert (run / "checkpoints").is_symlink() and snapshot(disk) == outside


# --------------------------------------------------------------------------- item 7: locks


@pytest.mark.parametrize("case", ["export-run-target", "export-out-into-run", "attack-out-deep"])
def test_writers_into_a_run_take_its_lock(tmp_path: Path, run_dir: Path, case: str) -> None:
    """While a prune holds RUN, nothing else may write below it, however the path is given."""
    from patrol_compress.locking import folder_lock

    run = copy_run(run_dir, tmp_path)
    other = Path(shutil.copytree(run_dir / "target", tmp_path / "other"))
    if case == "export-run-target":
        args: tuple[object, ...] = ("export", run / "target", "--target", "onnx", "--split", "2")
    elif case == "export-out-into-run":
        args = ("export", other, "--target", "onnx", "--split", "2", "--out", run / "x" / "y")
    else:
        args = ("attack", run, "--attack", "blackbox", "--out", run / "a" / "b" / "c")
    before = snapshot(run)
    with folder_lock(run):
        line = error_line(cli(*args))
    assert line == (
        f"error: {run.resolve()}: another patrol-compress process is working in this run "
        "folder; wait for it to finish (or stop it), then retry"
    )
    assert snapshot(run) == before


@pytest.mark.parametrize("name", [".patrol-compress.lock", ".patrol-compress.written"])
def test_a_dangling_symlink_in_a_run_writes_nothing_outside(
    tmp_path: Path, run_dir: Path, name: str
) -> None:
    """A lock file or ledger that is a link to elsewhere is refused, never followed."""
    run = copy_run(run_dir, tmp_path)
    planted = tmp_path / "elsewhere" / "created.txt"
    planted.parent.mkdir()
    (run / name).unlink()
    (run / name).symlink_to(planted)
    before = snapshot(run)
    line = error_line(cli("export", run, "--target", "onnx", "--split", "3"))
    assert line.startswith(f"error: {run.resolve() / name}: is a symbolic link")
    assert not planted.exists()
    assert snapshot(run) == before and not (run / "export" / "onnx-split3-fp32").exists()


# --------------------------------------------------------------------------- item 6: --force swaps


class _Killed(BaseException):
    """Stands for SIGKILL at an exact point (nothing after it runs but ``finally``)."""


def _die_at_replace(monkeypatch: pytest.MonkeyPatch, folder: Path, k: int) -> None:
    """os.replace dies at its ``k``-th call (0-based) that lands in ``folder``."""
    import os

    real = os.replace
    calls: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).parent.resolve() == folder.resolve():
            if len(calls) == k:
                raise _Killed
            calls.append(str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "kill", ["replace-0", "replace-1", "replace-2", "before-swap", "after-swap"]
)
def test_killed_export_force_leaves_a_whole_export(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, kill: str
) -> None:
    """export --force killed anywhere: the old export or the new one, each with its manifest."""
    from patrol_compress.contracts import verify_manifest
    from patrol_compress.exporters import export_run, partitions

    run = copy_run(run_dir, tmp_path)
    out = run / "export" / "onnx-split2-fp32"
    (out / "notes.txt").write_bytes(NOTES)
    old = json.loads((out / "manifest.json").read_text())
    if kill.startswith("replace"):
        _die_at_replace(monkeypatch, out, int(kill.split("-")[1]))
    else:
        real_swap = partitions.swap_in

        def swap(new: Path, target: Path) -> None:
            if kill == "before-swap":
                raise _Killed
            real_swap(new, target)
            raise _Killed

        monkeypatch.setattr(partitions, "swap_in", swap)
    with contextlib.suppress(_Killed):
        export_run(run, 2, "onnx", force=True, opset=16)  # opset 16: tell new from old
    manifest = verify_manifest(out)  # complete: every listed file present and intact
    assert manifest["opset"] in (old["opset"], 16)
    assert (out / "notes.txt").read_bytes() == NOTES


ATTACK_YAML = {
    "max_eval_images": 2,
    "grid_images": 2,
    "whitebox": {"steps": 1, "max_images": 2, "inits": ["gray"]},
    "recogniser": {"steps": 1, "width": 8},
}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory, run_dir: Path, one_thread: None) -> Path:
    """The tiny run attacked once (white-box, one step): attack.json and attack_grid.png."""
    from patrol_compress.attacks.evaluate import attack
    from patrol_compress.privacy_config import AttackConfig

    run = Path(shutil.copytree(run_dir, tmp_path_factory.mktemp("attacked") / "run"))
    attack(run, ["whitebox"], config=AttackConfig.model_validate(ATTACK_YAML))
    return run


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_killed_attack_force_never_mixes_grid_and_record(
    tmp_path: Path, attacked: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    """attack --force killed at each file replacement: attack.json names a grid of its own."""
    from patrol_compress.attacks.evaluate import attack
    from patrol_compress.privacy_config import AttackConfig

    run = copy_run(attacked, tmp_path)
    old_grid = (run / "attack_grid.png").read_bytes()
    wider = {**ATTACK_YAML, "grid_images": 1}  # another grid, and the record says so
    _die_at_replace(monkeypatch, run, k)
    with contextlib.suppress(_Killed):
        attack(run, ["whitebox"], config=AttackConfig.model_validate(wider))
    monkeypatch.undo()
    record = json.loads((run / "attack.json").read_text())
    grid = (run / record["grid"]["file"]).read_bytes()
    if record["config"]["grid_images"] == ATTACK_YAML["grid_images"]:
        assert grid == old_grid  # the old record still shows its own grid
    else:
        assert grid != old_grid and record["grid"]["file"] == "attack_grid.png"


# --------------------------------------------------------------------------- item 8: --artifact


def _relist(folder: Path, name: str) -> None:
    """Make manifest.json vouch for ``name`` as it is now (a self-consistent artifact)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _attack_artifact(tmp_path: Path, run: Path, artifact: Path) -> Result:
    config = tmp_path / "attack.yaml"
    tiny = {**ATTACK_YAML, "adaptive": {"epochs": 1, "batch_size": 8, "min_width": 8, "refine": 0}}
    config.write_text(json.dumps(tiny))
    return cli(
        "attack", run, "--attack", "adaptive", "--split", "2", "--artifact", artifact,
        "--config", config, "--out", tmp_path / "attack",
    )  # fmt: skip


@pytest.mark.parametrize("case", ["zeros", "other-model", "no-hash"])
def test_attack_artifact_must_be_this_runs_edge(tmp_path: Path, run_dir: Path, case: str) -> None:
    """A self-consistent artifact of another edge is refused in one line, nothing written."""
    import onnx
    from onnx import numpy_helper

    from patrol_compress.exporters import export_partitions
    from patrol_compress.models.saved import load_run_model

    run = copy_run(run_dir, tmp_path)
    artifact = Path(shutil.copytree(run / "export" / "onnx-split2-fp32", tmp_path / "art"))
    if case == "zeros":  # the edge sends zeros: an attack on it fails and reads as private
        model = onnx.load(str(artifact / "edge.onnx"))
        for init in model.graph.initializer:
            zero = numpy_helper.to_array(init) * 0
            init.CopyFrom(numpy_helper.from_array(zero, init.name))
        onnx.save(model, str(artifact / "edge.onnx"))
        _relist(artifact, "edge.onnx")
        words = "does not compute this model's edge"
    elif case == "other-model":
        other, _ = load_run_model(run)
        with torch.no_grad():
            next(other.parameters()).mul_(1.5)
        shutil.rmtree(artifact)
        export_partitions(other, 2, artifact, "onnx", "fp32", (3, 32, 32))
        words = "model_sha256 is not that of the model attacked"
    else:
        manifest = json.loads((artifact / "manifest.json").read_text())
        del manifest["model_sha256"], manifest["weights_sha256"]
        (artifact / "manifest.json").write_text(json.dumps(manifest))
        words = "records no hash of the model it was exported from"
    line = error_line(_attack_artifact(tmp_path, run, artifact))
    assert str(artifact) in line and words in line
    assert not (tmp_path / "attack" / "attack.json").exists()


def test_attack_artifact_of_this_run_passes_the_checks(tmp_path: Path, run_dir: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    result = _attack_artifact(tmp_path, run, run / "export" / "onnx-split2-fp32")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "attack" / "attack.json").read_text())["attacks"]["adaptive"]
    assert info["info"]["max_abs_diff_vs_torch"] < 1e-4


def test_int8_probe_bound_is_in_quantization_steps() -> None:
    """The rule itself: a few steps pass, zeros, a constant or noise do not."""
    from patrol_compress.attacks.adaptive import INT8_MAX_MEAN_STEPS, probe_difference

    gen = torch.Generator().manual_seed(0)
    torch_out = torch.relu(torch.randn(8, 4, 2, 2, generator=gen))
    step = float(torch_out.max() - torch_out.min()) / 255
    rounded = torch.round(torch_out / step) * step  # within half a step
    few = rounded + 3 * step * torch.sign(torch.randn(8, 4, 2, 2, generator=gen))
    assert probe_difference(rounded, torch_out, True)[0] <= 0.5
    assert probe_difference(few, torch_out, True)[0] <= INT8_MAX_MEAN_STEPS
    for bad in (torch.zeros_like(torch_out), torch.full_like(torch_out, float(torch_out.mean()))):
        assert probe_difference(bad, torch_out, True)[0] > INT8_MAX_MEAN_STEPS
    noise = torch_out + torch.randn(8, 4, 2, 2, generator=gen) * torch_out.std() * 2
    assert probe_difference(noise, torch_out, True)[0] > INT8_MAX_MEAN_STEPS


# --------------------------------------------------------------------------- item 10: messages


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--seconds", "1e308", "seconds (--seconds) 1e+308: at most 3600 seconds"),
        ("--warmup-seconds", "1e308", "warmup_seconds (--warmup-seconds) 1e+308: at most 3600"),
        ("--runs", str(10**30), "runs (--runs) 1000000000000000000000000000000: expected"),
        ("--warmup", str(10**30), "warmup (--warmup) 1000000000000000000000000000000: expected"),
        ("--batch", str(10**8), "batch size (--batch) 100000000: expected a whole number in"),
    ],
)
def test_bench_budgets_are_bounded_and_name_the_option(
    run_dir: Path, option: str, value: str, words: str
) -> None:
    artifact = run_dir / "export" / "onnx-split2-fp32"
    extra = () if option in ("--runs", "--seconds") else ("--runs", "1")
    line = error_line(cli("bench", artifact, option, value, *extra))
    assert words in line and "manifest" not in line


@pytest.mark.parametrize("command", ["export", "attack", "bench"])
def test_an_interrupt_says_what_was_kept_and_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    import signal

    import patrol_compress.api
    import patrol_compress.cli.bench
    import patrol_compress.exporters

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    owner = {
        "export": (patrol_compress.exporters, "export_run"),
        "attack": (patrol_compress.api, "attack"),
        "bench": (patrol_compress.cli.bench, "bench"),
    }[command]
    monkeypatch.setattr(*owner, interrupted)
    extra = ("--target", "onnx") if command == "export" else ()
    handler = signal.getsignal(signal.SIGINT)
    try:
        result = cli(command, tmp_path, *extra)
    finally:
        signal.signal(signal.SIGINT, handler)  # the CLI ignores further Ctrl-C while exiting
    assert result.exit_code == 130
    if command == "attack":  # attack keeps its finished parts and has --resume
        assert "interrupted; finished parts (decoder families" in result.output
        return
    assert "--resume" not in result.output
    assert "interrupted; nothing half-written was left" in result.output


def test_partitions_with_a_split_of_the_wrong_type_says_so(run_dir: Path) -> None:
    from patrol_compress import api
    from patrol_compress.errors import ModelError

    with pytest.raises(ModelError, match="split must be a whole number of stages, found '2'"):
        api.partitions(run_dir, split="2")  # type: ignore[arg-type]


@pytest.mark.parametrize("epoch", [99, -1, 5])
def test_a_checkpoint_epoch_beyond_the_stage_is_refused(tmp_path: Path, epoch: int) -> None:
    """last.json said epoch 99 (or -1) and the stage obeyed: skipped or repeated epochs."""
    from patrol_compress.errors import ArtifactError
    from patrol_compress.train.checkpoint import save_checkpoint
    from patrol_compress.train.loop import EpochReporter, run_stage

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if epoch == 5:  # a consistent checkpoint, of a longer stage than this one
        save_checkpoint(tmp_path, 5, {"m": model}, {"o": opt})
    else:
        save_checkpoint(tmp_path, 1, {"m": model}, {"o": opt})
        meta = json.loads((tmp_path / "last.json").read_text())
        meta["epoch"] = epoch
        (tmp_path / "last.json").write_text(json.dumps(meta))
    ran: list[int] = []

    def epoch_fn(index: int, reporter: EpochReporter) -> None:
        ran.append(index)
        reporter.step(1, {"loss": 0.0})

    with pytest.raises(ArtifactError, match="last.json: "):
        run_stage("train", tmp_path, 3, 1, epoch_fn, {"m": model}, {"o": opt}, True, quiet=True)
    assert ran == []


def test_a_negative_world_size_is_refused(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "-3")
    line = error_line(
        cli("prune", write_recipe(tmp_path, recipe_dict(tmp_path, cache)), "--out", out)
    )
    assert "WORLD_SIZE=-3: expected the number of processes" in line
    assert not out.exists()


def test_int8_cast_weights_are_refused(tmp_path: Path, run_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    from patrol_compress.io import sha256_file

    run = copy_run(run_dir, tmp_path)
    state = load_file(str(run / "model.safetensors"))
    cast = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()}
    save_file(cast, str(run / "model.safetensors"))
    meta = json.loads((run / "model.json").read_text())
    meta["weights"]["sha256"] = sha256_file(run / "model.safetensors")  # self-consistent
    (run / "model.json").write_text(json.dumps(meta))
    line = error_line(cli("export", run, "--target", "onnx", "--split", "3"))
    assert f"{run / 'model.safetensors'}: '" in line and "holds int8 values" in line
    assert not (run / "export" / "onnx-split3-fp32").exists()


@pytest.mark.parametrize("where", ["latency.threads", "num_workers", "adaptive.threads", "bench"])
def test_thread_counts_outside_the_cli_are_capped_too(
    tmp_path: Path, cache: Path, run_dir: Path, where: str
) -> None:
    from patrol_compress import api
    from patrol_compress.errors import UsageError
    from patrol_compress.machine import usable_cores

    too_many = usable_cores() + 1
    expected = f"{too_many}: expected 1..{usable_cores()} (the CPU cores this process may use)"
    if where == "bench":
        with pytest.raises(UsageError, match=re_escape(f"threads {expected}")):
            api.bench(run_dir / "export" / "onnx-split2-fp32", threads=too_many, runs=1)
        return
    out = tmp_path / "out"
    if where == "adaptive.threads":
        config = tmp_path / "attack.yaml"
        config.write_text(json.dumps({**ATTACK_YAML, "adaptive": {"threads": too_many}}))
        args: tuple[object, ...] = ("attack", run_dir, "--config", config, "--out", out)
    else:
        data = recipe_dict(tmp_path, cache)
        if where == "num_workers":
            data["train"]["num_workers"] = too_many
        else:
            data["patrol"]["budget"] = {"latency_ms": 5.0, "latency": {"threads": too_many}}
        args = ("prune", write_recipe(tmp_path, data), "--out", out)
    line = error_line(cli(*args))
    assert line.endswith(expected) or expected + " or 0" in line
    assert where.split(".")[0] in line
    assert not out.exists()


# --------------------------------------------------------------------------- item 9: tracebacks


def _oserror(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, code: int) -> None:
    """``owner.name`` fails as the machine would: permission denied, disk full."""
    import errno
    import os

    def fail(*args: object, **kwargs: object) -> None:
        path = args[0] if args else kwargs.get("dir")
        raise OSError(code, os.strerror(code), str(path))

    assert code in (errno.EACCES, errno.ENOSPC)
    monkeypatch.setattr(owner, name, fail)


@pytest.mark.parametrize("case", ["prune-enospc", "export-eacces", "export-file-in-the-way"])
def test_storage_errors_are_one_line_and_lose_nothing(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    import errno
    import os
    import tempfile

    run = copy_run(run_dir, tmp_path)
    if case == "prune-enospc":
        _oserror(monkeypatch, os, "replace", errno.ENOSPC)
        args: tuple[object, ...] = ("prune", same_recipe(run, tmp_path), "--out", run, "--resume")
        words = "No space left on device (the disk is full)"
    elif case == "export-eacces":
        _oserror(monkeypatch, tempfile, "mkdtemp", errno.EACCES)
        args = ("export", run, "--target", "onnx", "--split", "3")
        words = "Permission denied (no permission)"
    else:
        shutil.rmtree(run / "export")
        (run / "export").write_bytes(NOTES)
        args = ("export", run, "--target", "onnx", "--split", "3")
        words = "(something of that name is in the way)"
    before = snapshot(run)
    line = error_line(cli(*args, "--quiet") if case.startswith("prune") else cli(*args))
    assert words in line and str(run) in line
    monkeypatch.undo()
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["attack", "defend", "bench"])
def test_an_output_under_a_file_is_refused_before_work(
    tmp_path: Path, run_dir: Path, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(NOTES)
    if command == "bench":
        target = blocker / "bench.json"
        args: tuple[object, ...] = ("bench", run_dir / "export" / "onnx-split2-fp32")
        args += ("--runs", "1", "--json", target)
        option = "--json"
    else:
        target = blocker / "sub"
        args = (command, run_dir, "--out", target)
        option = "--out"
    line = error_line(cli(*args))
    assert line == (
        f"error: {blocker}: exists and is not a folder, so {option} {target} cannot be written"
    )
    assert blocker.read_bytes() == NOTES


def test_api_storage_error_is_a_patrol_error(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    from patrol_compress import api
    from patrol_compress.errors import StorageError

    run = copy_run(run_dir, tmp_path)
    _oserror(monkeypatch, tempfile, "mkdtemp", errno.EACCES)
    with pytest.raises(StorageError, match="Permission denied"):
        api.export(run, 3)


def test_a_corrupt_edge_onnx_under_attack_artifact_is_one_line(
    tmp_path: Path, run_dir: Path
) -> None:
    run = copy_run(run_dir, tmp_path)
    artifact = Path(shutil.copytree(run / "export" / "onnx-split2-fp32", tmp_path / "art"))
    (artifact / "edge.onnx").write_bytes(b"not an onnx model" * 10)
    _relist(artifact, "edge.onnx")
    line = error_line(_attack_artifact(tmp_path, run, artifact))
    assert line.startswith(f"error: {artifact / 'edge.onnx'}: onnxruntime cannot run the edge (")
    assert not (tmp_path / "attack" / "attack.json").exists()


@pytest.mark.openvino
def test_a_truncated_openvino_bin_under_attack_artifact_is_one_line(
    tmp_path: Path, run_dir: Path
) -> None:
    pytest.importorskip("openvino")
    from patrol_compress.exporters import export_run

    run = copy_run(run_dir, tmp_path)
    artifact = tmp_path / "ov"
    export_run(run, 2, "openvino", out=artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    for name in ("edge.onnx", "cloud.onnx"):  # the IR only, as an INT8 OpenVINO export holds
        (artifact / name).unlink()
        del manifest["files"][name]
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    blob = (artifact / "edge.bin").read_bytes()
    (artifact / "edge.bin").write_bytes(blob[: len(blob) // 3])
    _relist(artifact, "edge.bin")
    line = error_line(_attack_artifact(tmp_path, run, artifact))
    assert line.startswith(f"error: {artifact / 'edge.xml'}: openvino cannot run the edge (")


@pytest.mark.parametrize("field", ["params", "macs", "fit_split"])
def test_report_counts_of_ten_to_the_400_are_one_line(tmp_path: Path, field: str) -> None:
    from .test_bad_report import attack_json

    section = "budget" if field == "fit_split" else "edge"
    folder = tmp_path / "point"
    attack_json(folder, **{section: {field: 10**400}})
    line = error_line(cli("report", folder, "--out", tmp_path / "r.html"))
    assert f"{section}.{field}" in line and "at most 10^18" in line
    assert not (tmp_path / "r.html").exists()


def test_a_bogus_ov_precision_hint_is_one_line(run_dir: Path) -> None:
    artifact = run_dir / "export" / "onnx-split2-fp32"
    line = error_line(cli("bench", artifact, "--runtime", "openvino", "--ov-precision-hint", "x"))
    assert "--ov-precision-hint" in line and "expected one of f32, f16, bf16" in line


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("budget", "1000"),
        ("budget", 1.5),
        ("budget", [1, 2]),
        ("config", "lipschitz"),
        ("config", 5),
        ("total_steps", "10"),
        ("total_steps", 2.5),
        ("replan_every", "x"),
    ],
)
def test_patrol_pruner_arguments_of_the_wrong_type(argument: str, value: object) -> None:
    from patrol_compress import PatrolPruner
    from patrol_compress.errors import PatrolError

    from .helpers import tiny_resnet

    kwargs: dict[str, Any] = {"budget": {"fit_split": 1}, "total_steps": 10, argument: value}
    with pytest.raises(PatrolError, match=argument):
        PatrolPruner(tiny_resnet(), torch.rand(2, 3, 32, 32), split=2, **kwargs)


def test_api_arguments_of_the_wrong_type_are_patrol_errors(
    tmp_path: Path, cache: Path, run_dir: Path
) -> None:
    from patrol_compress import api
    from patrol_compress.errors import PatrolError

    artifact = run_dir / "export" / "onnx-split2-fp32"
    recipe = recipe_dict(tmp_path, cache)
    calls: dict[str, Any] = {
        "run_dir": lambda: api.load_model(5),  # type: ignore[arg-type]
        "out": lambda: api.prune(recipe, out=5),  # type: ignore[arg-type]
        "keep_checkpoints": lambda: api.prune(recipe, keep_checkpoints="bogus"),
        "target": lambda: api.export(run_dir, 2, target=5),  # type: ignore[arg-type]
        "calibration_images": lambda: api.export(
            run_dir,
            2,
            precision="int8",
            calibration_images="3",  # type: ignore[arg-type]
        ),
        "seconds": lambda: api.bench(artifact, seconds="1"),
        "foo": lambda: api.bench(artifact, foo=1),
        "split": lambda: api.attack(run_dir, ["whitebox"], split="2"),  # type: ignore[arg-type]
        "paths": lambda: api.report(5),  # type: ignore[arg-type]
        "bar": lambda: api.defend(run_dir, bar=1),
    }
    for word, call in calls.items():
        with pytest.raises(PatrolError, match=word):
            call()
    assert not (tmp_path / "run").exists()  # keep_checkpoints was checked before any work
