"""Data-parallel training across processes (``torchrun``), and the single-process default.

``torchrun --nproc-per-node N -m patrol_compress prune RECIPE`` starts N copies
of the same program; :func:`session` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
joins the process group (NCCL on CUDA, gloo on CPU) with a timeout, and leaves
it at exit, also on error. Everything else asks :func:`current` for a
:class:`Dist`, whose methods are no-ops in a single process (no torchrun
environment, or ``WORLD_SIZE=1``): such a run executes exactly the code it did
before distributed training existed.

What makes N processes compute what one process computes with the same global
batch (up to float reduction order):

* **Batches.** Each step every rank loads a disjoint, contiguous share
  (``B / N`` images) of the *same* global P x K batch
  (:class:`~patrol_compress.data.sampler.ShardedBatchSampler`), so the number
  of steps per epoch is the single-process one on every rank.
* **Loss on the global batch.** Batch-hard triplet mining needs every image of
  the batch, so the logits, features and labels are gathered
  (:meth:`Dist.gather_rows`) and every rank computes the identical loss of the
  whole batch. Per-image means computed locally (Lipschitz ratios, the
  surrogate's reconstruction error) average to the global mean because shards
  are equal.
* **Gradients.** After ``backward`` the gradients of the weights, the masks and
  the surrogate are averaged with one all-reduce (:meth:`Dist.average_grads`).
  Every collective's backward sums the gradient over ranks, so each rank
  differentiates ``sum over ranks`` of its objective and the average is the
  single-process gradient. Adam and FISTA's proximal step are deterministic
  given identical gradients, so weights, masks, FISTA state and the surrogate
  stay bitwise identical on every rank; :meth:`Dist.check_same` verifies that
  after every epoch and stops the run if they ever differ. (We do not wrap the
  model in ``DistributedDataParallel``: PATROL runs the edge blocks, the cloud
  and the surrogate as separate calls, which DDP's forward-hook bookkeeping
  does not support, and one explicit all-reduce per step is what DDP would do.)
* **BatchNorm.** Synchronised (:meth:`Dist.sync_batchnorm`): training-mode BNs
  normalise with the mean and variance of the global batch, as one process
  would, and update identical running statistics on every rank. Without it each
  rank would normalise with its own ``B / N`` images (a different function, and
  with P x K batches of 8 to 64 images a noisy one) and the running statistics
  would drift apart between ranks. ``torch.nn.SyncBatchNorm`` refuses CPU
  tensors, so this is a small implementation of the same thing that runs on
  gloo and NCCL alike. Eval-mode BNs (the edge during PATROL, evaluation) use
  running statistics and need no communication.
* **Random numbers.** All ranks share one torch RNG state (same seeds, the same
  checkpointed state on resume). Where one process would draw numbers for the
  whole batch in order (the flip of every image while loading it, the
  Lipschitz perturbation of every image), each rank advances the CPU generator
  past the other ranks' shares (:meth:`Dist.batches`, :meth:`Dist.rng_share`),
  so each image gets the number it would get in one process and the stream
  stays aligned. This is exact on CPU with ``num_workers: 0`` and Lipschitz
  ``sample_fraction: 1``; otherwise ranks draw valid but different numbers
  (statistically, not numerically, the single-process run).

Files: only rank 0 writes (:meth:`Dist.run_on_main`, which also is the barrier
the others wait at before reading what it wrote, and which re-raises rank 0's
user error on every rank so that no rank is left waiting). The run directory
must therefore be visible to every rank (one node, or a shared file system).
A rank that fails otherwise leaves :func:`session` destroying its process
group, which closes its connections: the others' next collective fails at once
(measured: 0.2 s on gloo), and torchrun stops the remaining workers when one
exits with an error. Any collective also gives up after
``PATROL_DIST_TIMEOUT`` seconds (default 1800, long enough for rank 0 to
evaluate while the others wait at the end of the stage).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader

from patrol_compress import errors
from patrol_compress.errors import PatrolError

T = TypeVar("T")

TIMEOUT_ENV = "PATROL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
MAX_TIMEOUT_S = 864_000.0  # 10 days
_BURN_CHUNK = 1 << 20


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; every method is a no-op when ``world == 1``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=default_device)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files, evaluates and prints."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: NCCL needs CUDA tensors, gloo CPU ones."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # -- control flow -------------------------------------------------------------

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def run_on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; every rank returns when it is done.

        A :class:`PatrolError` raised on rank 0 is raised on every rank (same
        class and message), so the others fail with it instead of waiting for a
        rank that has gone. Other ranks get ``None``.
        """
        if not self.active:
            return fn()
        result: T | None = None
        status = ""
        failure: BaseException | None = None
        if self.main:
            try:
                result = fn()
            except PatrolError as exc:
                failure, status = exc, f"{type(exc).__name__}\n{exc}"
            except BaseException as exc:
                failure, status = exc, "\nrank 0 failed (see its traceback)"
        status = self._broadcast_text(status)
        if failure is not None:
            raise failure
        if status:
            raise _remote_error(status)
        return result

    def _broadcast_text(self, text: str) -> str:
        data = text.encode("utf-8") if self.main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        tdist.broadcast(size, 0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.comm_device)
        if self.main and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if buf.numel():
            tdist.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode("utf-8")

    # -- parameters, gradients, logged values --------------------------------------

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (start of a stage)."""
        if not self.active:
            return
        for t in [*module.parameters(), *module.buffers()]:
            buf = t.detach().to(self.comm_device)  # the tensor itself when already there
            tdist.broadcast(buf, 0)
            if buf.data_ptr() != t.data_ptr():
                t.copy_(buf)

    @torch.no_grad()
    def average_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks with one all-reduce per dtype.

        Every rank runs the same graph, so the same parameters have gradients;
        the count travels with the gradients and a disagreement is an error.
        """
        if not self.active:
            return
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault(p.grad.dtype, []).append(p.grad)
        count = torch.tensor([float(sum(len(g) for g in groups.values()))], device=self.comm_device)
        tdist.all_reduce(count)
        if int(count.item()) != sum(len(g) for g in groups.values()) * self.world:
            raise RuntimeError("ranks disagree on which parameters have gradients")
        for dtype in sorted(groups, key=str):
            grads = groups[dtype]
            flat = torch.cat([g.reshape(-1).to(self.comm_device) for g in grads])
            tdist.all_reduce(flat)
            flat.div_(self.world)
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n

    def mean_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of logged numbers (same keys on every rank)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t)
        t.div_(self.world)
        means = dict(zip(keys, t.cpu().tolist(), strict=True))
        return {k: means[k] for k in values}

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along dim 0 in rank order (the global batch).

        Differentiable: every rank computes the same loss of the gathered batch,
        so the gradient reaching rank r's rows is its slice of that loss's
        gradient, times ``world`` (the sum over ranks of identical losses; see
        the module docstring for why sums).
        """
        if not self.active:
            return x
        return _GatherRows.apply(x, self.rank, self.world)

    def check_same(
        self,
        modules: dict[str, nn.Module],
        what: str,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Stop if any rank's parameters, buffers or ``tensors`` differ from rank 0's (bitwise)."""
        if not self.active:
            return
        h = hashlib.blake2b(digest_size=8)
        named = [
            (f"{name}.{key}", t)
            for name in sorted(modules)
            for key, t in sorted(modules[name].state_dict().items())
        ]
        for key, t in [*named, *sorted((tensors or {}).items())]:
            h.update(key.encode())
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes())
        digest = torch.tensor(
            [int.from_bytes(h.digest(), "little", signed=True)],
            dtype=torch.int64,
            device=self.comm_device,
        )
        every = [torch.zeros_like(digest) for _ in range(self.world)]
        tdist.all_gather(every, digest)
        if any(int(d.item()) != int(every[0].item()) for d in every):
            raise errors.TrainingError(
                f"{what}: the ranks' models differ (distributed training lost sync); "
                "rerun with --resume from the last checkpoint"
            )

    # -- BatchNorm ------------------------------------------------------------------

    @contextmanager
    def sync_batchnorm(self, *modules: nn.Module | None) -> Iterator[None]:
        """Within the block, training-mode BNs under ``modules`` use global-batch statistics.

        The BN modules themselves are untouched (their ``forward`` is overridden
        on the instance and restored afterwards), so masks, torch-pruning and
        saved state dicts see ordinary BatchNorms.
        """
        patched: dict[int, nn.modules.batchnorm._BatchNorm] = {}
        if self.active:
            for module in modules:
                for m in module.modules() if module is not None else ():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in patched:
                        setattr(m, "forward", _SyncedForward(m, self))  # noqa: B010
                        patched[id(m)] = m
        try:
            yield
        finally:
            for m in patched.values():
                delattr(m, "forward")  # back to the class's forward

    # -- random numbers -------------------------------------------------------------

    def batches(self, loader: DataLoader) -> Iterator[Any]:
        """Iterate ``loader`` (this rank's shares) keeping the torch RNG stream aligned.

        One process loading the whole global batch would draw the augmentation
        numbers of every image in order; here rank r skips the draws of ranks
        before it, loads its share, then skips the draws of the ranks after it.
        The draws per image are measured, not assumed (see :func:`_draws_per_item`);
        when they cannot be (worker processes, an irregular dataset), nothing is
        skipped and ranks augment independently.
        """
        if not self.active:
            yield from loader
            return
        per_item = 0
        if loader.num_workers == 0:
            measured = _draws_per_item(loader.dataset)
            if measured is None:
                warnings.warn(
                    "could not measure the dataset's random draws per image: ranks augment "
                    "independently (results are not numerically those of one process)",
                    stacklevel=2,
                )
            else:
                per_item = measured
        share = (loader.batch_size or 1) * per_item
        it = iter(loader)
        for _ in range(len(loader)):
            _burn(self.rank * share)
            batch = next(it)
            _burn((self.world - 1 - self.rank) * share)
            yield batch

    @contextmanager
    def rng_share(self, numbers: int, on_cpu: bool = True) -> Iterator[None]:
        """The block draws ``numbers`` random numbers for this rank's share of a global draw.

        Rank r skips the shares of the ranks before it and after it, so its
        numbers are the ones one process drawing for the whole batch would give
        its images (exact for CPU ``randn``/``rand`` of a multiple of 16 numbers).
        CUDA generators cannot be advanced that way: there ranks draw their own.
        """
        if not self.active or not on_cpu:
            yield
            return
        _burn(self.rank * numbers)
        yield
        _burn((self.world - 1 - self.rank) * numbers)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.n = rank, world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        own = grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]
        return own * ctx.world, None, None


class _GatherStats(torch.autograd.Function):
    """all_gather whose backward sums the gradient over ranks (each rank's loss uses all)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        ctx.rank = rank
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        tdist.all_reduce(grad)
        return grad[ctx.rank], None, None


class _SyncedForward:
    """BatchNorm forward with the mean/variance of the global batch (see sync_batchnorm)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, dist_: Dist) -> None:
        self.bn, self.dist = bn, dist_

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not (bn.training or bn.running_mean is None):
            return type(bn).forward(bn, x)  # running statistics: nothing to share
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        var_l, mean_l = torch.var_mean(xf, dim=dims, correction=0)
        count = torch.full_like(mean_l, float(x.numel() // x.shape[1]))
        stats = _GatherStats.apply(
            torch.stack([mean_l, var_l, count]), self.dist.rank, self.dist.world
        )
        means, variances, counts = stats[:, 0], stats[:, 1], stats[:, 2].detach()
        n = counts.sum(0)
        mean = (means * counts).sum(0) / n
        var = ((variances + (means - mean) ** 2) * counts).sum(0) / n
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            assert bn.running_var is not None and bn.num_batches_tracked is not None
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = (
                    bn.momentum
                    if bn.momentum is not None
                    else 1.0 / float(bn.num_batches_tracked.item())
                )
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                bn.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                bn.running_var.mul_(1 - factor).add_(unbiased * factor)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y.to(x.dtype)


def _burn(numbers: int) -> None:
    """Advance the CPU torch generator by ``numbers`` float32 uniform draws."""
    while numbers > 0:
        n = min(numbers, _BURN_CHUNK)
        torch.rand(n)
        numbers -= n


def _draws_per_item(dataset: Any, most: int = 8) -> int | None:
    """How many float32 uniforms loading one item takes from the CPU generator.

    Measured by loading item 0 and comparing the generator state with 0..most
    plain draws; the state is restored afterwards. None when nothing matches.
    """
    if len(dataset) == 0:
        return 0
    state = torch.get_rng_state()
    try:
        dataset[0]
        after = torch.get_rng_state()
        for k in range(most + 1):
            torch.set_rng_state(state)
            _burn(k)
            if torch.equal(torch.get_rng_state(), after):
                return k
        return None
    finally:
        torch.set_rng_state(state)


def _remote_error(status: str) -> PatrolError:
    """Rank 0's error, raised again on another rank (marked so the CLI stays quiet)."""
    name, _, message = status.partition("\n")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PatrolError)):
        cls = PatrolError
    exc = cls.__new__(cls)
    exc.args = (message,)
    exc.from_main_rank = True  # type: ignore[attr-defined]
    return exc


# -- the process-wide context ---------------------------------------------------------

_current = Dist()


def current() -> Dist:
    """This process's :class:`Dist` (single process unless inside :func:`session`)."""
    return _current


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.PatrolError(f"environment variable {name}={raw!r} is not an integer") from None


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise errors.PatrolError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    # NaN passes "<= 0" and then breaks timedelta with a traceback; inf overflows it.
    if not (0 < value <= MAX_TIMEOUT_S):
        raise errors.PatrolError(
            f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]"
        )
    return value


@contextmanager
def session() -> Iterator[Dist]:
    """Join the torchrun job described by the environment for the duration of the block.

    Without ``WORLD_SIZE`` (or with 1) this is the single-process :class:`Dist`
    and nothing is initialised; inside an active session it is that session.
    The process group is destroyed on the way out, whatever happened inside.
    """
    global _current
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:  # -3 used to run single-process, as if the variable were unset
        raise errors.PatrolError(
            f"WORLD_SIZE={world}: expected the number of processes (>= 1; torchrun sets it)"
        )
    if world == 1 or _current.active:
        yield _current
        return
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise errors.PatrolError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    if local < 0:
        raise errors.PatrolError(f"LOCAL_RANK={local}: expected a device index >= 0")
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    tdist.init_process_group(
        backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_seconds())
    )
    previous = _current
    _current = Dist(rank, world, local, dev)
    try:
        yield _current
    finally:
        _current = previous
        tdist.destroy_process_group()
