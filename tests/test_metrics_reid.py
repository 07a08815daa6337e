"""Re-id metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from patrol_compress.errors import DataError
from patrol_compress.metrics.reid import cosine_distance, evaluate_ranking


def _eval(dist: list[list[float]], qp: list[int], gp: list[int], qc: list[int], gc: list[int]):
    return evaluate_ranking(np.array(dist), np.array(qp), np.array(gp), np.array(qc), np.array(gc))


def test_perfect_ranking() -> None:
    r = _eval([[0.1, 0.9, 0.8]], [1], [1, 2, 3], [0], [1, 1, 1])
    assert r.as_dict() == {"rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "mAP": 1.0, "mINP": 1.0}


def test_hand_computed_ap_and_inp() -> None:
    # Ranked gallery: pid 2, pid 1, pid 3, pid 1 -> matches at ranks 2 and 4.
    # AP = (1/2 + 2/4) / 2 = 0.5 ; INP = 2 / 4 = 0.5 ; rank-1 miss, rank-5 hit.
    r = _eval([[0.2, 0.1, 0.3, 0.4]], [1], [1, 2, 3, 1], [0], [1, 1, 1, 1])
    d = r.as_dict()
    assert d["rank1"] == 0.0 and d["rank5"] == 1.0
    assert d["mAP"] == pytest.approx(0.5) and d["mINP"] == pytest.approx(0.5)


def test_same_camera_same_identity_is_excluded() -> None:
    # The closest gallery image is the same vehicle seen by the same camera: ignored.
    r = _eval([[0.0, 0.5, 0.2]], [1], [1, 1, 2], [3], [3, 4, 4])
    d = r.as_dict()
    assert d["rank1"] == 0.0  # after exclusion: pid 2 (0.2) then pid 1 (0.5)
    assert d["mAP"] == pytest.approx(0.5)


def test_queries_without_valid_match_are_skipped_and_averaged() -> None:
    dist = [[0.1, 0.2], [0.3, 0.1], [0.5, 0.5]]
    r = _eval(dist, [1, 2, 9], [1, 2], [0, 0, 0], [1, 1])
    assert r.valid_queries == 2
    assert r.as_dict()["rank1"] == 1.0


def test_no_valid_query_is_an_error() -> None:
    with pytest.raises(DataError, match="no query has a valid match"):
        _eval([[0.1]], [1], [1], [0], [0])


def test_cosine_distance() -> None:
    q = np.array([[1.0, 0.0]])
    g = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert np.allclose(cosine_distance(q, g), [[0.0, 1.0, 2.0]])
