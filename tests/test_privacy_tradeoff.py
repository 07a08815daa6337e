"""The goal arithmetic of benchmarks/privacy_tradeoff.py on hand-made points."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from .helpers import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("privacy_tradeoff")


def point(series: str, acc: float, psnr: float, ssim: float, split: int = 2) -> dict[str, Any]:
    return {
        "series": series,
        "split": split,
        "accuracy": {"metric": "rank1", "value": acc},
        "strongest": {"attack": "blackbox", "psnr": psnr, "ssim": ssim},
    }


def test_below_curve_interpolates_in_accuracy(bench: ModuleType) -> None:
    series = [point("noise", 0.9, 20.0, 0.6), point("noise", 0.5, 10.0, 0.2)]
    at_07 = bench.below_curve(point("patrol", 0.7, 14.0, 0.5), series, "psnr")
    assert at_07["at_accuracy"] == pytest.approx(15.0)
    assert at_07["below"] is True
    above = bench.below_curve(point("patrol", 0.7, 16.0, 0.5), series, "psnr")
    assert above["below"] is False
    unreachable = bench.below_curve(point("patrol", 0.95, 30.0, 0.9), series, "psnr")
    assert unreachable == {
        "at_accuracy": None,
        "below": True,
        "why": "no strength reaches this accuracy",
    }
    flat = bench.below_curve(point("patrol", 0.3, 11.0, 0.5), series, "psnr")
    assert flat["at_accuracy"] == 10.0 and flat["below"] is False


def test_summarise_reports_drops_margins_and_curves(bench: ModuleType) -> None:
    points = {
        "none-split2": point("none", 0.90, 20.0, 0.60),
        "patrol": point("patrol", 0.89, 13.0, 0.45, split=4),
        "pruning-only": point("pruning-only", 0.886, 16.0, 0.55, split=4),
        "noise-1": point("noise", 0.60, 12.0, 0.40),
    }
    g = bench.summarise(points, 2)
    assert g["psnr_drop_pct"] == pytest.approx(35.0)
    assert g["ssim_drop_pct"] == pytest.approx(25.0)
    assert g["acc_cost_pts"] == pytest.approx(1.0)
    assert g["goal_met_vs_undefended"] is True
    d = g["vs_pruning_only"]
    assert d["psnr_margin_db"] == pytest.approx(3.0)
    assert d["ssim_margin"] == pytest.approx(0.10)
    assert d["goal_met"] is True and d["accuracy_matched"] is True
    # noise at 0.89 accuracy: between (0.60, 12) and (0.90, 20) -> 19.73 dB, PATROL 13 is below
    assert g["below_baseline_curves"]["noise"]["psnr"]["below"] is True
    assert g["below_every_curve"] is True
    assert "pruning-only" not in g["below_baseline_curves"]
    text = bench.markdown(
        {
            "dataset": "x",
            "command": "c",
            "threads": 1,
            "seconds": 60,
            "compute_seconds": 600,
            "attack_summary": "a",
            "goal": g,
            "points": {
                k: {
                    **v,
                    "attacks": {"blackbox": {"attack_accuracy": 0.5}},
                    "edge": {"params": 1, "bytes_sent": 4},
                    "mean_image": {"psnr": 10.0, "ssim": 0.1},
                }
                for k, v in points.items()
            },
        }
    )
    assert "PSNR -35.0%" in text and "**met**" in text
    assert "all the compute behind the points 10 min" in text
