"""benchmarks/paired_strength.py pairs two methods' stronger attacks by target and seed."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .helpers import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("paired_strength")


def results(path: Path, rows: list[tuple[str, float, float]], images: str = "abc") -> Path:
    """An attacker_strength results file with the fields the pairing reads."""

    def attack(psnr: float, ssim: float) -> dict[str, Any]:
        return {"psnr": psnr, "ssim": ssim, "image_set": {"images": 3, "sha256": images}}

    points = [{"point": p, "default": attack(db, s)} for p, db, s in rows]
    path.write_text(json.dumps({"points": points}))
    return path


def test_pairs_by_seed_and_target_across_files(bench: ModuleType, tmp_path: Path) -> None:
    a0 = results(tmp_path / "a0.json", [("narrow-s0-t0", 15.0, 0.50), ("narrow-s1-t0", 15.2, 0.5)])
    a1 = results(tmp_path / "a1.json", [("narrow-s0-t1", 14.8, 0.48)])
    b0 = results(tmp_path / "b0.json", [("noisy-s1-t0", 14.7, 0.47), ("noisy-s0-t0", 15.1, 0.49)])
    b1 = results(tmp_path / "b1.json", [("noisy-s0-t1", 14.5, 0.46), ("noisy-s9-t9", 1.0, 0.1)])
    args = ["--a", f"{a0},{a1}", "--b", f"{b0},{b1}", "--name", "x", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    out = json.loads((tmp_path / "paired_strength_x.json").read_text())
    by = {r["pair"]: r for r in out["rows"]}
    assert set(by) == {"s0-t0", "s1-t0", "s0-t1"}  # s9-t9 has no partner
    assert by["s1-t0"]["d_psnr"] == pytest.approx(-0.5)
    assert by["s0-t0"]["d_psnr"] == pytest.approx(0.1)
    s = out["summary"]
    assert (s["pairs"], s["b_lower_psnr"], s["b_lower_ssim"]) == (3, 2, 3)
    assert s["median_d_psnr"] == pytest.approx(-0.3)
    assert s["smallest_sign_test_p"] == pytest.approx(0.25)
    assert "provenance" in out
    assert "not a significance claim" in (tmp_path / "paired_strength_x.md").read_text()


def test_refuses_pairs_scored_on_different_images(bench: ModuleType, tmp_path: Path) -> None:
    a = results(tmp_path / "a.json", [("narrow-s0-t0", 15.0, 0.5)], images="abc")
    b = results(tmp_path / "b.json", [("noisy-s0-t0", 14.0, 0.4)], images="def")
    with pytest.raises(SystemExit, match="different evaluation images"):
        bench.main(["--a", str(a), "--b", str(b), "--name", "x", "--out", str(tmp_path)])
    assert not (tmp_path / "paired_strength_x.json").exists()


def test_a_prefix_keeps_one_method_of_a_mixed_file(bench: ModuleType, tmp_path: Path) -> None:
    """A file that holds a noisy and a plain point of one pair is read for the plain one."""
    mixed = results(tmp_path / "m.json", [("noisy-s0-t0", 14.0, 0.4), ("plain-s0-t0", 18.0, 0.7)])
    b = results(tmp_path / "b.json", [("narrow-s0-t0", 15.0, 0.5)])
    args = ["--a", str(mixed), "--b", str(b), "--name", "x", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="appears twice"):
        bench.main(args)
    assert bench.main([*args, "--a-prefix", "plain"]) == 0
    row = json.loads((tmp_path / "paired_strength_x.json").read_text())["rows"][0]
    assert row["a_point"] == "plain-s0-t0" and row["d_psnr"] == pytest.approx(-3.0)


def test_take_max_pairs_each_metrics_higher_attack(bench: ModuleType, tmp_path: Path) -> None:
    """``--take max``: per metric the higher of the light and the run attack, which may come
    from different attacks; a point whose two attacks scored different images is refused."""

    def attack(psnr: float, ssim: float, images: str = "abc") -> dict[str, Any]:
        return {"psnr": psnr, "ssim": ssim, "image_set": {"images": 3, "sha256": images}}

    def point(name: str, light: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        return {"point": name, "light": light, "default": run}

    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"points": [point("p-s0-t0", attack(17.0, 0.60), attack(17.5, 0.58))]}))
    b.write_text(json.dumps({"points": [point("q-s0-t0", attack(14.6, 0.45), attack(14.2, 0.47))]}))
    args = ["--a", str(a), "--b", str(b), "--name", "x", "--out", str(tmp_path)]
    assert bench.main([*args, "--take", "max"]) == 0
    row = json.loads((tmp_path / "paired_strength_x.json").read_text())["rows"][0]
    assert row["a"] == {"psnr": 17.5, "ssim": 0.60} and row["b"] == {"psnr": 14.6, "ssim": 0.47}
    assert bench.main(args) == 0  # the default takes the run attack alone
    row = json.loads((tmp_path / "paired_strength_x.json").read_text())["rows"][0]
    assert row["d_psnr"] == pytest.approx(14.2 - 17.5)
    b.write_text(
        json.dumps({"points": [point("q-s0-t0", attack(14.6, 0.45, "zz"), attack(14.2, 0.47))]})
    )
    with pytest.raises(SystemExit, match="different evaluation images"):
        bench.main([*args, "--take", "max"])
