"""``patrol-compress report``: attack.json files -> self-contained HTML + markdown.

The fixtures are written here with realistic numbers (one file in the old
format, without label/series/accuracy/edge, and one point whose grid PNG is
missing), so the tests need no model and no torch. The browser test renders the
page in headless Chromium and checks what a person would see.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from patrol_compress.cli.app import app
from patrol_compress.report import load_points
from patrol_compress.report.plot_labels import Box, LabelRequest, place_labels, text_box

runner = CliRunner()

METRIC_NOTE = (
    "PSNR and SSIM per image (torchmetrics, data_range=1.0, SSIM Gaussian 11x11 sigma 1.5), "
    "then averaged over images; per-image PSNR capped at 100 dB"
)
# (folder, label, series, split, defense, accuracy, blackbox/whitebox/adaptive PSNR, with grid)
POINTS: list[tuple[str, str, str, int, Any, float, tuple[float, float, float], bool]] = [
    ("none2", "no defense split 2", "none", 2, None, 0.906, (24.1, 26.3, 24.0), True),
    ("none4", "no defense split 4", "none", 4, None, 0.906, (19.2, 21.0, 19.1), True),
    ("patrol4", "PATROL split 4", "patrol", 4, None, 0.911, (15.2, 16.1, 15.3), True),
    (
        "noise1",
        "noise sigma=1 split 2",
        "noise",
        2,
        ("sigma", 1.0),
        0.712,
        (16.9, 17.4, 17.0),
        False,
    ),
    (
        "noise05",
        "noise sigma=0.5 split 2",
        "noise",
        2,
        ("sigma", 0.5),
        0.843,
        (20.2, 21.1, 20.4),
        True,
    ),
]
OLD_LABEL = "old_run/target split 1"
EXPECTED_ORDER = [
    "no defense split 2",
    "no defense split 4",
    "PATROL split 4",
    "noise sigma=0.5 split 2",
    "noise sigma=1 split 2",
    OLD_LABEL,
]
PLOTTED = len(POINTS)  # every point but the old-style one has an accuracy
WITH_GRID = sum(p[-1] for p in POINTS) + 1  # plus the old-style one


def _grid_png(path: Path, rows: int, seed: int) -> None:
    """A small real PNG laid out like attack_grid.png (rows of 16-pixel tiles)."""
    img = Image.new("RGB", (4 * 16, rows * 16))
    for r in range(rows):
        for c in range(4):
            colour = ((40 * r + seed * 30) % 256, (60 * c + seed * 50) % 256, 128)
            img.paste(colour, (c * 16, r * 16, c * 16 + 16, r * 16 + 16))
    img.save(path)


def _score(psnr: float, acc: float | None = 0.5) -> dict[str, Any]:
    ssim = round(min(0.99, (psnr - 10) / 22), 4)
    out: dict[str, Any] = {"images": 180, "psnr": psnr, "ssim": ssim, "mse": 10 ** (-psnr / 10)}
    out["l2"] = 5.5
    if acc is not None:
        out["attack_accuracy"] = acc
    out["region"] = {"psnr": psnr - 0.9, "ssim": ssim + 0.03}
    return out


def _old_style(run: str) -> dict[str, Any]:
    """The first attack.json format (as the attack command wrote it before labels)."""
    return {
        "run": run,
        "split": 1,
        "split_source": "argument",
        "attacks": {
            "blackbox": _score(26.41, 0.728),
            "whitebox": _score(29.75, 0.75),
            "adaptive": _score(26.40, 0.722),
        },
        "mean_image": _score(14.36, 0.033),
        "recogniser": {"clean_accuracy": 0.856, "chance": 0.033, "seconds": 69.7},
        "data": {"attacker_images": 1080, "eval_images": 180},
        "metric_note": METRIC_NOTE,
        "region_note": "'plate': fixed box [0.2, 0.6, 0.8, 0.9] for every image",
        "grid": {
            "file": "attack_grid.png",
            "rows": ["original", "blackbox", "whitebox", "adaptive"],
        },
        "model_weights_sha256": "a5" * 32,
        "config": {"blackbox": {"epochs": 30}},
        "versions": {"python": "3.11.2", "torch": "2.13.0", "torchmetrics": "1.8.0"},
    }


def _new_style(label: str, series: str, split: int, defense: Any, acc: float,
               psnrs: tuple[float, float, float]) -> dict[str, Any]:  # fmt: skip
    data = _old_style(f"/runs/{series}")
    data["split"] = split
    data["attacks"] = {
        name: _score(psnr, round(0.05 + psnr / 40, 3))
        for name, psnr in zip(("blackbox", "whitebox", "adaptive"), psnrs, strict=True)
    }
    best = max(data["attacks"], key=lambda a: data["attacks"][a]["psnr"])
    channels = {2: 128, 4: 61}[split]
    data.update(
        label=label,
        series=series,
        defense=None
        if defense is None
        else {"name": series, "parameter": defense[0], "strength": defense[1]},
        accuracy={"metric": "rank1", "value": acc, "all": {"rank1": acc, "mAP": acc - 0.07}},
        edge={
            "params": {2: 173_568, 4: 172_890}[split],
            "weight_bytes": 4 * {2: 173_568, 4: 172_890}[split],
            "macs": {2: 19_700_000, 4: 7_400_000}[split],
            "bytes_sent": 4 * channels * 4 * 4 // (2 if split == 4 else 1),
            "output_shape": [channels, 4, 4],
        },
        budget={"params": 173_600, "fit_split": 2} if series == "patrol" else None,
        strongest={"attack": best, **{k: data["attacks"][best][k] for k in ("psnr", "ssim")}},
    )
    return data


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A results tree: five labelled points and one old-style file."""
    root = tmp_path / "results"
    for i, (folder, label, series, split, defense, acc, psnrs, grid) in enumerate(POINTS):
        d = root / folder
        d.mkdir(parents=True)
        (d / "attack.json").write_text(
            json.dumps(_new_style(label, series, split, defense, acc, psnrs), indent=1)
        )
        if grid:
            _grid_png(d / "attack_grid.png", 4, i)
    old = root / "old" / "qs1_target_split1"
    old.mkdir(parents=True)
    (old / "attack.json").write_text(json.dumps(_old_style("/tmp/old_run/target")))
    _grid_png(old / "attack_grid.png", 4, 9)
    return root


def _report(results: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["report", str(results), "--out", str(out), *extra])


def _svg(html: str, svg_id: str) -> str:
    match = re.search(rf'<svg id="{svg_id}".*?</svg>', html, flags=re.S)
    assert match, f"no <svg id={svg_id}>"
    return match.group(0)


def test_cli_writes_html_markdown_and_assets(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    result = _report(results, out, "--title", "Split-4 privacy")
    assert result.exit_code == 0, result.output
    md = out.with_suffix(".md").read_text()
    assets = tmp_path / "out" / "report_files"
    assert {p.name for p in assets.iterdir()} >= {"plane-psnr.svg", "plane-ssim.svg"}
    assert len(list(assets.glob("grid-*.png"))) == WITH_GRID
    assert md.startswith("# Split-4 privacy\n")
    # the same summary rows, in the same order, in both outputs
    md_rows = [line for line in md.splitlines() if line.startswith("| ")]
    summary = md_rows[1 : 1 + len(EXPECTED_ORDER)]
    first_cells = [row.split(" | ")[0].removeprefix("| ") for row in summary]
    assert [cell.replace("\\_", "_") for cell in first_cells] == EXPECTED_ORDER
    html = out.read_text()
    assert "<title>Split-4 privacy</title>" in html
    table = re.search(r'<table id="summary">.*?</table>', html, flags=re.S)
    assert table
    assert re.findall(r'<tr[^>]*><td class="label">([^<]*)</td>', table.group(0)) == (
        EXPECTED_ORDER
    )
    # markdown links resolve relative to the .md file
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out.parent / link).is_file(), link
    assert "grid missing" in md and "grid missing" in html
    assert "torchmetrics" in md and "torchmetrics" in html


def test_points_sorted_and_old_files_get_defaults(results: Path) -> None:
    points = load_points([results])
    assert [p.label for p in points] == EXPECTED_ORDER
    old = points[-1]
    assert (old.series, old.accuracy, old.edge) == ("unlabelled", None, None)
    assert (old.strongest, old.strongest_score.psnr) == ("whitebox", 29.75)
    patrol = points[2]
    assert patrol.budget == {"params": 173_600, "fit_split": 2}
    assert patrol.defense is None and patrol.accuracy is not None
    assert patrol.accuracy.value == pytest.approx(0.911)


def test_plane_has_one_point_per_point_with_accuracy(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert _report(results, out).exit_code == 0
    html = out.read_text()
    for svg_id in ("plane-psnr", "plane-ssim"):
        svg = _svg(html, svg_id)
        labels = re.findall(r'<circle class="point[^"]*"[^>]*data-label="([^"]+)"', svg)
        assert sorted(labels) == sorted(EXPECTED_ORDER[:PLOTTED])
        assert svg.count('class="point patrol"') == 1
        assert svg.count('class="baseline"') == 1 and 'stroke-dasharray="6 4"' in svg
        # one line per series with two or more points (none, noise)
        assert sorted(re.findall(r'class="series-line" data-series="([^"]+)"', svg)) == [
            "noise",
            "none",
        ]
    assert f"Not plotted (their attack.json has no accuracy): {OLD_LABEL}." in html
    standalone = (tmp_path / "r_files" / "plane-psnr.svg").read_text()
    assert standalone.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert standalone.count('<circle class="point') == PLOTTED


def test_html_is_self_contained(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert _report(results, out).exit_code == 0
    html = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert not re.search(r"url\(|@import|<script|<link", html, flags=re.I)
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == WITH_GRID
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert html.count('class="grid-missing"') == 1


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("empty", "expected a folder holding attack.json"),
        ("absent", "not found"),
        ("malformed", "expected valid JSON"),
        ("no-split", "attack.json: split: expected the split point"),
        ("no-psnr", "attacks.whitebox.psnr: expected the PSNR"),
        ("bad-accuracy", "accuracy.value: expected a fraction in [0, 1], found 91.1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, setup: str, words: str) -> None:
    target = tmp_path / "in"
    target.mkdir()
    bad = target / "attack.json"
    data = _new_style("x", "none", 2, None, 0.9, (20.0, 21.0, 19.0))
    if setup == "absent":
        target = tmp_path / "nowhere"
    elif setup == "malformed":
        bad.write_text('{"split": 2, "attacks": {')
    elif setup == "no-split":
        del data["split"]
    elif setup == "no-psnr":
        del data["attacks"]["whitebox"]["psnr"]
    elif setup == "bad-accuracy":
        data["accuracy"]["value"] = 91.1
    if setup not in ("empty", "absent", "malformed"):
        bad.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    result = _report(target, out)
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and message.startswith("error:")
    assert words in message
    assert str(target) in message  # names the file or folder
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_existing_output_refused_without_force(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert _report(results, out).exit_code == 0
    out.write_text("kept")
    assets = tmp_path / "r_files"
    (assets / "notes.txt").write_text("mine")
    (assets / "grid-99-stale.png").write_bytes(b"old")

    refused = _report(results, out)
    assert refused.exit_code == 2
    assert "exists; pass --force" in refused.output and "\n" not in refused.output.strip()
    assert out.read_text() == "kept"
    assert (assets / "grid-99-stale.png").exists()

    forced = _report(results, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert (assets / "notes.txt").read_text() == "mine"  # not ours: kept
    assert not (assets / "grid-99-stale.png").exists()  # a previous report's grid: replaced
    assert not list(tmp_path.glob(".*.tmp"))


def test_out_must_be_html(results: Path, tmp_path: Path) -> None:
    result = _report(results, tmp_path / "r.md")
    assert result.exit_code == 2 and "ending in .html" in result.output


def test_duplicate_labels_are_told_apart(results: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin" / "again"
    shutil.copytree(results / "old" / "qs1_target_split1", twin)
    labels = [p.label for p in load_points([results, twin, results / "none2"])]
    assert len(labels) == len(EXPECTED_ORDER) + 1 == len(set(labels))
    assert f"{OLD_LABEL} (again)" in labels


def test_report_never_imports_torch(results: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from patrol_compress.report import build_report; "
        f"build_report([Path({str(results)!r})], Path({str(tmp_path / 'r.html')!r})); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_labels_do_not_overprint_and_patrol_is_always_named() -> None:
    crowd = [LabelRequest(300, 200 + 2 * i, 6, 20, 11) for i in range(4)]
    patrol = LabelRequest(305, 201, 8, 14, 12, required=True)
    bounds = Box(0, 0, 600, 400)
    spots = place_labels([*crowd, patrol], [], bounds)
    assert spots[-1] is not None  # required: placed first, whatever the crowd
    boxes = [
        text_box(s.x, s.y, r.chars, r.font_size, s.anchor)
        for s, r in zip(spots, [*crowd, patrol], strict=True)
        if s is not None
    ]
    assert 2 <= len(boxes) <= len(crowd) + 1
    assert all(b.inside(bounds) for b in boxes)
    assert not any(a.hits(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _overlap(a: Any, b: Any) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.mark.browser
def test_report_renders_in_chromium(results: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright  # a dev dependency: absence fails

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.skip("no chromium binary (apt-get install chromium)")
    out = tmp_path / "r.html"
    assert _report(results, out).exit_code == 0
    url = out.resolve().as_uri()

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")

            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
            )
            assert len(images) == WITH_GRID
            assert all(done and w > 0 and h > 0 for done, w, h in images), images
            assert page.locator(".grid-missing").count() == 1
            assert page.locator(".grid-missing").is_visible()

            for svg_id in ("plane-psnr", "plane-ssim"):
                svg = page.locator(f"svg#{svg_id}")
                assert svg.is_visible()
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 200
                points = page.locator(f"svg#{svg_id} circle.point")
                assert points.count() == PLOTTED
                for i in range(PLOTTED):  # every point drawn inside its plot
                    pb = points.nth(i).bounding_box()
                    assert pb is not None and pb["width"] > 0
                    assert box["x"] <= pb["x"] and pb["x"] + pb["width"] <= box["x"] + box["width"]
                    assert (
                        box["y"] <= pb["y"] and pb["y"] + pb["height"] <= box["y"] + box["height"]
                    )

                labels = page.locator(f"svg#{svg_id} text.point-label")
                boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
                assert len(boxes) >= 2 and all(b is not None for b in boxes)
                assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])

            rows = page.locator("table#summary tbody tr")
            assert rows.count() == len(EXPECTED_ORDER)
            assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == (
                EXPECTED_ORDER
            )
            assert page.locator("table#edge tbody tr").count() == len(EXPECTED_ORDER)
        finally:
            browser.close()
    assert problems == []
    assert all(r == url or r.startswith("data:") for r in requests), requests


def _set_attacker(
    folder: Path, epochs: int, families: tuple[str, str] = ("upsample", "grey")
) -> None:
    """Give a point's attack.json the settings ``attack`` records (config and info)."""
    path = folder / "attack.json"
    data = json.loads(path.read_text())
    data["config"] = {"blackbox": {"epochs": epochs}, "whitebox": {"steps": 600}}
    data["attacks"]["blackbox"]["info"] = {
        "family": families[0],
        "epochs_run": min(epochs, 5),
        "data": {"images_used": 1080},
    }
    data["attacks"]["whitebox"]["info"] = {"family": families[1], "images": 64}
    path.write_text(json.dumps(data))


def _settings_rows(md: str) -> dict[str, list[str]]:
    section = md.split("### Attack settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return {r.split(" | ")[0].removeprefix("| "): r.split(" | ")[1:] for r in rows}


def test_report_shows_the_attack_settings_behind_each_point(results: Path, tmp_path: Path) -> None:
    for folder, *_ in POINTS:
        _set_attacker(results / folder, 30)
    _set_attacker(results / "patrol4", 3, ("mirror", "decoder"))  # a weaker attacker
    out = tmp_path / "r.html"
    args = ["report", str(results / "none2"), str(results / "patrol4"), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    md, html = out.with_suffix(".md").read_text(), out.read_text()
    rows = _settings_rows(md)
    assert rows["PATROL split 4"][2:4] == [
        "mirror, 3 of max 3 epochs, 1,080 images",
        "decoder, 600 steps, 64 images",
    ]
    assert rows["no defense split 2"][2:4] == [
        "upsample, 5 of max 30 epochs, 1,080 images",
        "grey, 600 steps, 64 images",
    ]
    assert "mirror, 3 of max 3 epochs, 1,080 images" in html
    assert "attacked with 2 different settings" in md and "attacked with 2 different" in html
    assert "(attacked with different settings)" in md


def test_points_attacked_alike_get_no_settings_warning(results: Path, tmp_path: Path) -> None:
    for folder, *_ in POINTS:
        _set_attacker(results / folder, 30)
    _set_attacker(results / "patrol4", 30, ("mirror", "decoder"))  # another winner, same config
    out = tmp_path / "r.html"
    args = ["report", str(results / "none2"), str(results / "patrol4"), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    md = out.with_suffix(".md").read_text()
    assert "different settings" not in md and "different settings" not in out.read_text()


def test_headline_compares_patrol_with_the_undefended_budget_split(
    results: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    assert _report(results, out).exit_code == 0
    # strongest PSNR 16.10 vs 26.30 dB; SSIM 0.2773 vs 0.7409 (none2: split 2 = fit_split)
    headline = "PATROL split 4: PSNR -38.8% / SSIM -62.6% vs undefended split 2"
    md = out.with_suffix(".md").read_text()
    assert f"**{headline}, accuracy +0.5 points.**" in md
    assert md.index(headline) < md.index("## Summary")
    assert f'<p class="headline"><strong>{headline}' in out.read_text()

    shutil.rmtree(results / "none2")  # no undefended point at the budget split: no headline
    again = tmp_path / "again.html"
    assert _report(results, again).exit_code == 0
    assert "vs undefended" not in again.with_suffix(".md").read_text()
