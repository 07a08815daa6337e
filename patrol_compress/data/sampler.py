"""P x K identity sampler for batch-hard triplet training.

Each batch holds ``P`` identities with ``K`` images each, so every anchor has a
positive and the hardest positive/negative can be mined inside the batch.
Identities with fewer than ``K`` images are sampled with replacement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from patrol_compress.errors import DataError


class IdentitySampler(Sampler[int]):
    """Yields indices in P x K groups; one epoch draws about as many images as the split has.

    ``rank``/``world`` shard whole batches between processes for distributed runs,
    each rank drawing the same permutation from the shared ``seed`` and ``epoch``.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.index: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            self.index[int(pid)].append(i)
        self.ids = sorted(self.index)
        if len(self.ids) < p:
            raise DataError(
                f"a P x K batch needs at least P={p} identities in the training split, "
                f"found {len(self.ids)}"
            )
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        per_epoch = max(1, len(pids) // (p * k))
        self.batches_per_epoch = max(world, per_epoch // world * world)

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
        for b, batch in enumerate(self._batches()):
            if b % self.world == self.rank:
                yield from batch

    def __len__(self) -> int:
        return self.batches_per_epoch // self.world * self.p * self.k
