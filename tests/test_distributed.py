"""Data-parallel training (torchrun, gloo on CPU) computes what one process computes.

Two ranks are started with ``torch.multiprocessing.spawn`` calling the same
entry points torchrun reaches (the CLI app, :func:`patrol_compress.distributed.session`),
and once with torchrun itself. Every worker runs one torch thread.

Tolerances, and why they are not zero: two ranks sum a convolution's weight
gradient over two half-batches and then over ranks, and compute BatchNorm
statistics from two partial results; one process sums in another order. The
gradients of one step therefore agree to float32 rounding (measured: at most
4e-6 of each tensor's largest entry, for the surrogate's step and PATROL's,
masks included; a real mistake, such as rank-local BatchNorm statistics or
triplet mining, gives differences of order 1). The gradient of a conv bias
followed by BatchNorm is zero up to rounding, so it is compared with the
step's largest gradient instead of its own. Over a run the
differences grow: Adam divides each gradient component by its own magnitude,
so in the first steps a rounding-level difference in a near-zero component
becomes a full learning-rate step. Measured on the recipe below: target
weights differ by 2e-4 after one epoch (target metrics identical), masks by
4e-6 after PATROL (the pruned structure identical, channel for channel), and
the final weights by 2e-2 after recovery, which trains a fresh surrogate and
fresh Adam state, moving the final mAP by 0.02 on 9 queries.

The pruned structure is asserted equal because with one PATROL epoch the
budget plan is ranked once, on the masks' identical initial values. With more
epochs the plan is re-ranked every epoch on masks that differ by 1e-6; two
channels whose masks are that close may swap places, so equal structure is not
guaranteed in general (measured: 272 vs 273 channels removed after 2 epochs),
only the budget, which both runs meet.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from patrol_compress import distributed
from patrol_compress.data.base import ArrayDataset, DataBundle
from patrol_compress.data.sampler import IdentitySampler, ShardedBatchSampler
from patrol_compress.pipeline import prune
from patrol_compress.recipe import TrainConfig, parse_recipe
from patrol_compress.train.target import make_loader, set_epoch

from .helpers import tiny_recipe_dict, write_recipe

GRAD_RTOL = 1e-4  # one step, of each tensor's largest entry (measured <= 4e-6)
# Below this fraction of the step's largest gradient a tensor's gradient is zero: a conv
# bias followed by a training-mode BatchNorm has an exactly zero gradient whose computed
# value is rounding noise (up to 2e-5 of the step's largest with the surrogate's
# channels-last BatchNorm kernels on CPU, 4e-6 in NCHW); noise is not compared with noise.
ZERO_GRAD = 1e-4
TARGET_WEIGHT_ATOL = 2e-3  # after one target epoch (measured 2e-4)
MASK_ATOL = 1e-4  # after one PATROL epoch (measured 4e-6)
TARGET_METRIC_ATOL = 0.02  # measured 0: no query changes rank
FINAL_MAP_ATOL = 0.1  # after recovery (measured 0.018 on 9 queries)
FINAL_RANK_ATOL = 2 / 9 + 1e-6  # at most two of the 9 queries change rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, world: int, port: int) -> None:
    """What torchrun sets for each worker, and one thread per worker."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PATROL_DIST_TIMEOUT="120",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


def _recipe_dict(tmp_path: Path, run: str) -> dict[str, Any]:
    data = tiny_recipe_dict(tmp_path, epochs=1, lipschitz=_LIPSCHITZ)
    data["train"]["epochs"] = 1
    data["output_dir"] = str(tmp_path / run)
    return data


# sample_fraction 1: every image is perturbed, so each rank's share of the
# perturbation noise is exactly the one a single process draws for its images.
_LIPSCHITZ = {
    "enabled": True,
    "alphas": [0.5, 0.1, 0.01, 0.005],
    "sigma": 0.1,
    "sample_fraction": 1.0,
}


# -- the sampler -------------------------------------------------------------------


def test_ranks_get_disjoint_shares_of_the_single_process_batches() -> None:
    pids = [i // 3 for i in range(60)]  # 20 identities, 3 images each
    single = IdentitySampler(pids, 4, 2, seed=5)
    single.set_epoch(3)
    order = list(single)
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    shards = []
    for rank in range(2):
        s = ShardedBatchSampler(IdentitySampler(pids, 4, 2, seed=5), 8, rank, 2)
        s.set_epoch(3)
        got = list(s)
        assert len(got) == len(s) == len(batches) * 4  # same number of steps on every rank
        shards.append([got[i : i + 4] for i in range(0, len(got), 4)])
    assert [a + b for a, b in zip(*shards, strict=True)] == batches


def _indexed_bundle(task: str) -> DataBundle:
    """60 constant images whose value is their index (a flip leaves them unchanged)."""
    images = np.repeat(np.arange(60, dtype=np.uint8), 4 * 4 * 3).reshape(60, 4, 4, 3)
    train = ArrayDataset(images, [i // 3 for i in range(60)], [i % 3 for i in range(60)])
    return DataBundle(task, train, 20)  # type: ignore[arg-type]


def _index_batches(loader: Any, epochs: int) -> list[list[int]]:
    out = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        out += [(x[:, 0, 0, 0] * 255).round().int().tolist() for x, _, _ in loader]
    return out


@pytest.mark.parametrize("task", ["reid", "classification"])
def test_rank_loaders_split_the_single_process_batches(
    task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_loader: per step, rank 0's then rank 1's share is one process's batch."""
    cfg = TrainConfig(identities_per_batch=4, instances_per_identity=2)
    single = _index_batches(make_loader(_indexed_bundle(task), cfg, 3), 2)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "_current", distributed.Dist(rank, 2, rank))
        shares.append(_index_batches(make_loader(_indexed_bundle(task), cfg, 3), 2))
    assert [a + b for a, b in zip(*shares, strict=True)] == single
    assert len(single) == 2 * (60 // 8)


# -- one step: gradients -----------------------------------------------------------


class _Stop(Exception):
    pass


def _first_grads(recipe_data: dict[str, Any], folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Averaged gradients of the surrogate's first step and of PATROL's first step.

    Runs the real ``patrol_finetune`` and records what ``average_grads`` leaves
    in ``.grad`` (a no-op in one process), stopping after the first PATROL step.
    """
    from patrol_compress import distributed
    from patrol_compress.data import build_data
    from patrol_compress.pipeline import fresh_model
    from patrol_compress.pruning.patrol import PatrolParts, build_surrogate, patrol_finetune
    from patrol_compress.pruning.structure import make_structure

    recipe = parse_recipe(recipe_data)
    cfg = recipe.patrol
    data = build_data(recipe.data)
    shape = (data.channels, data.image_size, data.image_size)
    model = fresh_model(recipe, data)
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    structure = make_structure(cfg.granularity, model, cfg.split, cfg.mask_init, example)
    torch.manual_seed(recipe.seed + 2)
    surrogate = build_surrogate(model, cfg.split, shape, cfg.adversarial.adversary_width)
    names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
    names |= {id(p): f"surrogate.{n}" for n, p in surrogate.named_parameters()}
    seen: dict[str, dict[str, torch.Tensor]] = {}
    original = distributed.Dist.average_grads

    def record(self: distributed.Dist, params: list[torch.nn.Parameter]) -> None:
        original(self, params)
        grads = {names[id(p)]: p.grad.clone() for p in params if p.grad is not None}
        kind = "patrol" if any(".mask." in n for n in grads) else "surrogate"
        seen.setdefault(kind, grads)
        if kind == "patrol":
            raise _Stop

    distributed.Dist.average_grads = record  # type: ignore[method-assign]
    try:
        patrol_finetune(
            PatrolParts(model, structure, surrogate), data, recipe, folder, None, False, True
        )
    except _Stop:
        pass
    finally:
        distributed.Dist.average_grads = original  # type: ignore[method-assign]
    return seen


def test_one_step_gradients_match_single_process(two_ranks: Path) -> None:
    single = _first_grads(_recipe_dict(two_ranks, "unused"), two_ranks / "grads-single")
    double = torch.load(two_ranks / "grads.pt", weights_only=True)
    assert set(single) == set(double) == {"surrogate", "patrol"}
    for kind in single:
        assert set(single[kind]) == set(double[kind])
        assert any(".mask." in n for n in single[kind]) == (kind == "patrol")
        step_max = max(float(g.abs().max()) for g in single[kind].values())
        for name, g in single[kind].items():
            scale = float(g.abs().max())
            if scale < ZERO_GRAD * step_max:
                # Zero up to rounding (a conv bias BatchNorm cancels): only noise to compare.
                scale = step_max
            diff = float((g - double[kind][name]).abs().max())
            assert diff <= GRAD_RTOL * scale, f"{kind} {name}: {diff:.3g} of {scale:.3g}"


# -- the whole job -----------------------------------------------------------------


def _forbid_writes(root: Path) -> None:
    """Make any write, creation or removal under ``root`` fail in this process."""
    prefix = str(root)

    def guard(path: Any) -> None:
        if os.fspath(path).startswith(prefix):
            raise AssertionError(f"rank {os.environ['RANK']} wrote {path}")

    real_open, real_os_open = builtins.open, os.open

    def checked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            guard(file)
        return real_open(file, mode, *args, **kwargs)

    def checked_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guard(path)
        return real_os_open(path, flags, *args, **kwargs)

    def wrap(fn: Any) -> Any:
        def checked(path: Any, *args: Any, **kwargs: Any) -> Any:
            guard(path)
            return fn(path, *args, **kwargs)

        return checked

    builtins.open = checked_open
    os.open = checked_os_open
    for name in ("mkdir", "unlink", "remove", "rmdir", "replace", "rename"):
        setattr(os, name, wrap(getattr(os, name)))
    shutil.rmtree = wrap(shutil.rmtree)  # type: ignore[assignment]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One rank: the first steps' gradients, then the whole job through the CLI."""
    _join(rank, world, port)
    from patrol_compress import distributed
    from patrol_compress.cli.app import app

    base = Path(root)
    with distributed.session() as ctx:  # the CLI's own session joins this one
        grads = _first_grads(_recipe_dict(base, "unused"), base / f"grads-{rank}")
        if ctx.main:
            torch.save(grads, base / "grads.pt")
        out = base / "dist"
        if rank != 0:
            _forbid_writes(out)
        args = ["prune", str(base / "r.yaml"), "--out", str(out), "--quiet", "--threads", "1"]
        code = app(args, standalone_mode=False)
        if code not in (None, 0):
            raise SystemExit(code)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two gloo ranks, started once for this module's comparisons with one process."""
    root = tmp_path_factory.mktemp("ranks")
    write_recipe(root, _recipe_dict(root, "dist"))
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_two_ranks_prune_like_one_process(two_ranks: Path) -> None:
    single_dir, dist_dir = two_ranks / "single", two_ranks / "dist"
    single = prune(parse_recipe(_recipe_dict(two_ranks, "single")), quiet=True)

    # Completed, and rank 1 wrote nothing (its writes fail): the same files as
    # one process writes, no temporary leftovers.
    double = json.loads((dist_dir / "metrics.json").read_text())
    stages = json.loads((dist_dir / "stages.json").read_text())
    assert {"target", "patrol", "remove", "recover", "evaluate"} <= set(stages)
    assert _files(dist_dir) == _files(single_dir)

    for when, tol in (("before", TARGET_METRIC_ATOL), ("after", None)):
        for key, value in single["accuracy"][when].items():
            got = double["accuracy"][when][key]
            if tol is None:
                tol = FINAL_MAP_ATOL if key in ("mAP", "mINP") else FINAL_RANK_ATOL
            assert abs(got - value) <= tol, f"accuracy.{when}.{key}: {got} vs {value}"
    target_a = load_file(str(single_dir / "target" / "model.safetensors"))
    target_b = load_file(str(dist_dir / "target" / "model.safetensors"))
    for k, v in target_a.items():
        assert float((v.double() - target_b[k].double()).abs().max()) <= TARGET_WEIGHT_ATOL, k

    # Masks after PATROL: close, and exactly the same ones are zero.
    masked_a = load_file(str(single_dir / "patrol" / "masked.safetensors"))
    masked_b = load_file(str(dist_dir / "patrol" / "masked.safetensors"))
    masks = [k for k in masked_a if k.endswith("mask.weight")]
    assert masks
    for k in masks:
        assert float((masked_a[k] - masked_b[k]).abs().max()) <= MASK_ATOL, k
        assert torch.equal(masked_a[k] == 0, masked_b[k] == 0), k

    # The pruned structure: the same removal, channel count for channel count.
    assert double["removal"]["removed"] == single["removal"]["removed"]
    assert double["edge"]["after"] == single["edge"]["after"]
    final_a = load_file(str(single_dir / "model.safetensors"))
    final_b = load_file(str(dist_dir / "model.safetensors"))
    assert {k: v.shape for k, v in final_a.items()} == {k: v.shape for k, v in final_b.items()}
    assert double["edge"]["after"]["params"] <= double["budget"]["params"]


# -- failures ----------------------------------------------------------------------


def test_torchrun_reports_rank0_error_once_and_exits(tmp_path: Path) -> None:
    """A user error found by rank 0 stops every rank at once, printed once (real torchrun)."""
    recipe = write_recipe(tmp_path, _recipe_dict(tmp_path, "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("not ours")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "patrol_compress",
        "prune",
        str(recipe),
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATROL_DIST_TIMEOUT": "60"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "exists and is not empty" in errors[0], done.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def _crash_worker(rank: int, world: int, port: int) -> None:
    _join(rank, world, port)
    os.environ["PATROL_DIST_TIMEOUT"] = "600"
    from patrol_compress import distributed

    with distributed.session() as ctx:
        if rank == 1:
            raise RuntimeError("rank 1 failed on its own")
        ctx.barrier()  # must fail fast when rank 1 leaves, not wait for the timeout


def test_a_failing_rank_does_not_hang_the_others() -> None:
    ctx = mp.start_processes(
        _crash_worker, args=(2, _free_port()), nprocs=2, join=False, start_method="spawn"
    )
    try:
        for p in ctx.processes:
            p.join(60)
        assert all(p.exitcode is not None for p in ctx.processes), "a rank is still waiting"
        assert all(p.exitcode != 0 for p in ctx.processes)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
