"""Re-identification ranking metrics under the VeRi protocol.

For each query, gallery images of the same identity *and* the same camera are
excluded (they are near-duplicates a real deployment would never have to match);
queries left with no true match are skipped, as in FastReID. Distances are
cosine (``1 - cos``). ``mINP`` is the mean inverse negative penalty of Ye et
al.: for each query, the number of true matches divided by the rank of the
hardest (last) true match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patrol_compress.errors import DataError


@dataclass(frozen=True)
class RankingResult:
    cmc: np.ndarray  # cmc[k-1] = fraction of valid queries with a match in the top k
    mAP: float
    mINP: float
    valid_queries: int

    def as_dict(self) -> dict[str, float]:
        def rank(k: int) -> float:
            return float(self.cmc[min(k, len(self.cmc)) - 1])

        return {
            "rank1": rank(1),
            "rank5": rank(5),
            "rank10": rank(10),
            "mAP": self.mAP,
            "mINP": self.mINP,
        }


def cosine_distance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return 1.0 - qn @ gn.T


def evaluate_ranking(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> RankingResult:
    """CMC, mAP and mINP from a query x gallery distance matrix."""
    nq, ng = dist.shape
    if nq != len(q_pids) or ng != len(g_pids):
        raise DataError(
            f"distance matrix {dist.shape} does not match {len(q_pids)} queries, "
            f"{len(g_pids)} gallery images"
        )
    max_rank = min(max_rank, ng)
    order = np.argsort(dist, axis=1, kind="stable")
    cmc_sum = np.zeros(max_rank)
    aps: list[float] = []
    inps: list[float] = []
    for i in range(nq):
        idx = order[i]
        keep = ~((g_pids[idx] == q_pids[i]) & (g_camids[idx] == q_camids[i]))
        matches = (g_pids[idx] == q_pids[i])[keep]
        if not matches.any():
            continue
        hits = np.flatnonzero(matches)
        cmc = np.zeros(max_rank)
        if hits[0] < max_rank:
            cmc[hits[0] :] = 1.0
        cmc_sum += cmc
        precision_at_hits = np.arange(1, len(hits) + 1) / (hits + 1)
        aps.append(float(precision_at_hits.mean()))
        inps.append(float(len(hits) / (hits[-1] + 1)))
    if not aps:
        raise DataError("no query has a valid match in the gallery (check the query/gallery split)")
    n = len(aps)
    return RankingResult(cmc_sum / n, float(np.mean(aps)), float(np.mean(inps)), n)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
