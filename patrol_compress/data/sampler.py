"""P x K identity sampler for batch-hard triplet training, and its per-rank shards.

Each batch holds ``P`` identities with ``K`` images each, so every anchor has a
positive and the hardest positive/negative can be mined inside the batch.
Identities with fewer than ``K`` images are sampled with replacement.

Distributed runs wrap any sampler in :class:`ShardedBatchSampler`: every rank
walks the same global order (same seed and epoch) and takes its contiguous
``B / world`` share of each global batch, so a step's global batch is exactly
the batch one process would train on, and every rank runs the same number of
steps. (Sharding whole batches instead would make the global batch ``world``
times larger and the batch-hard triplet mine only inside each rank's batch.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence, Sized

import torch
from torch.utils.data import Sampler

from patrol_compress.errors import DataError


class IdentitySampler(Sampler[int]):
    """Yields indices in P x K groups; one epoch draws about as many images as the split has.

    The order depends only on ``seed`` and the epoch set with :meth:`set_epoch`,
    so a resumed run and every rank of a distributed run draw the same batches.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        self.index: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            self.index[int(pid)].append(i)
        self.ids = sorted(self.index)
        if len(self.ids) < p:
            raise DataError(
                f"train.identities_per_batch: a P x K batch needs at least P={p} identities "
                f"in the training split, found {len(self.ids)}"
            )
        self.p, self.k, self.seed = p, k, seed
        self.epoch = 0
        self.batches_per_epoch = max(1, len(pids) // (p * k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches: list[list[int]] = []
        order: list[int] = []
        while len(batches) < self.batches_per_epoch:
            if len(order) < self.p:
                order += [self.ids[i] for i in torch.randperm(len(self.ids), generator=g).tolist()]
            chosen, order = order[: self.p], order[self.p :]
            batch: list[int] = []
            for pid in chosen:
                pool = self.index[pid]
                if len(pool) >= self.k:
                    pick = torch.randperm(len(pool), generator=g)[: self.k].tolist()
                else:
                    pick = torch.randint(len(pool), (self.k,), generator=g).tolist()
                batch += [pool[j] for j in pick]
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self._batches():
            yield from batch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.p * self.k


class ShardedBatchSampler(Sampler[int]):
    """Rank ``rank``'s contiguous share of every full global batch of ``base``'s order.

    ``base`` is read completely once per epoch (an index list; the images are
    not touched), cut into global batches of ``batch_size`` (an incomplete last
    batch is dropped, as the single-process loaders do with ``drop_last``) and
    each batch into ``world`` equal shares. Use with a DataLoader of batch size
    ``batch_size // world`` and ``drop_last=True``.
    """

    def __init__(self, base: Sampler[int], batch_size: int, rank: int, world: int) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        if batch_size % world:
            raise DataError(
                f"the batch of {batch_size} images cannot be split evenly between {world} "
                "processes; choose train.identities_per_batch x instances_per_identity "
                "divisible by the number of processes"
            )
        self.base, self.batch_size, self.rank, self.world = base, batch_size, rank, world
        self.local = batch_size // world

    @property
    def epoch(self) -> int:
        return int(getattr(self.base, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        start = self.rank * self.local
        for b in range(len(order) // self.batch_size):
            first = b * self.batch_size + start
            yield from order[first : first + self.local]

    def __len__(self) -> int:
        n = len(self.base) if isinstance(self.base, Sized) else 0
        return n // self.batch_size * self.local
