"""Is a lighter attacker as strong as the default? The black-box attack of frontier points, twice.

A frontier that cannot afford the library's default attack suite on this
machine's CPU runs a lighter one (``benchmarks/recipes/attack_cpu_frontier.yaml``:
one decoder family instead of three). Its numbers may only be published as
the default's if, on at least three points, the default black-box attack is
within 0.3 dB of the lighter one; otherwise they are lower bounds and must be
called so. This script makes that check through the library: for each named
point of a finished (or running) frontier work folder it runs
``patrol-compress attack`` with the default black-box settings on the point's
pruned run, and compares its strongest family (chosen, as always, on the
attacker's validation images) with the black-box result the frontier
recorded for the same point, on the same evaluation images:

    python benchmarks/attacker_strength.py --work runs/frontier/quickstart_uplink_v2 \\
        --points pruning-only-recovery_epochs16-s0-t0,uplink-uplink.bits2-s0-t0 \\
        --name quickstart_uplink --threads 1

Each point's default attack is kept under ``WORK/strength/POINT`` (a rerun
reuses it); the results go to ``benchmarks/results/attacker_strength_<name>.{json,md}``
with provenance.

``--config FILE`` replaces the default with another, stronger attack setting
where the default itself is out of reach (Fashion-MNIST's default trains on all
60,000 images: hours per point on 2 CPU cores); its evaluation-image count must
match the frontier's (the images are checked), and the results name it.

``--attack NAME`` runs another attack of the library in place of the
black-box one (``informed``: the black-box attacker also told the cloud's
output), still compared with the frontier's black-box record of the point;
its runs are kept under ``WORK/strength-<config stem>-NAME/POINT``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from patrol_compress import api
from patrol_compress.config.privacy import AttackConfig, load_attack_config
from patrol_compress.io import read_json
from patrol_compress.provenance import write_results

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE_DB = 0.3
"""How far below the default a lighter attacker may read and still stand for it."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, required=True, help="the frontier's work folder")
    p.add_argument("--points", required=True, help="comma-separated point names")
    p.add_argument("--name", required=True, help="results file stem suffix")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--config", type=Path, default=None, help="the stronger attack (default: the library's)"
    )
    p.add_argument(
        "--attack",
        default="blackbox",
        help="the library attack run on each point (default: blackbox); compared with the "
        "frontier's black-box record",
    )
    return p.parse_args(argv)


def attack_of(report: dict[str, Any], attack: str = "blackbox") -> dict[str, Any]:
    """A learned attack's chosen result in an ``attack.json`` (family, scores, images)."""
    bb = report["attacks"][attack]
    info = bb.get("info", {})
    return {
        "family": info.get("family"),
        "families": {
            name: {k: fam.get(k) for k in ("psnr", "ssim", "best_val_psnr", "epochs_run")}
            for name, fam in info.get("families", {}).items()
        },
        "psnr": bb["psnr"],
        "ssim": bb["ssim"],
        "val_psnr": bb.get("val_psnr"),
        "image_set": bb.get("image_set"),
    }


def check_point(
    work: Path, point: str, config: Path | None = None, attack: str = "blackbox"
) -> dict[str, Any]:
    """The default (or ``config``'s) ``attack`` of ``point``'s pruned run against the
    frontier's black-box record."""
    run = work / "runs" / point
    folder = "strength" if config is None else f"strength-{config.stem}"
    out = work / (folder if attack == "blackbox" else f"{folder}-{attack}") / point
    start = time.perf_counter()
    if (out / "attack.json").is_file():
        default_report = read_json(out / "attack.json")
    else:
        resume = (out / ".attack-parts").is_dir()
        default_report = api.attack(
            run,
            [attack],
            config=AttackConfig() if config is None else load_attack_config(config),
            out=out,
            label=point,
            resume=resume,
        )
    light_file = work / "points" / point / "attack.json"
    if not light_file.is_file():
        raise SystemExit(f"{light_file}: the frontier has not attacked this point yet; rerun later")
    light, default = attack_of(read_json(light_file)), attack_of(default_report, attack)
    if light["image_set"] != default["image_set"]:
        raise SystemExit(f"{point}: the two attacks scored different evaluation images")
    return {
        "point": point,
        "light": light,
        "default": default,
        "default_minus_light_db": default["psnr"] - light["psnr"],
        "within_tolerance": default["psnr"] - light["psnr"] <= TOLERANCE_DB,
        # The attack's own record: a rerun that reuses a finished attack keeps its cost.
        "attack_seconds": default_report["attacks"][attack].get("seconds"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(
    rows: list[dict[str, Any]], name: str, config: Path | None = None, attack: str = "blackbox"
) -> str:
    strong = "the library default" if config is None else f"`{config.as_posix()}`"
    if attack == "blackbox":
        what, who = "black-box attack", "default" if config is None else "stronger"
    else:
        what, who = f"`{attack}` attack", attack
    lines = [
        f"# Lighter attacker against a stronger one: {name}",
        "",
        "Black-box attack of each frontier point's pruned edge (the frontier's lighter suite) "
        f"against the {what} with {strong}, same evaluation images; family chosen on the "
        "attacker's validation images in both.",
        "",
        f"| point | light family | light PSNR / SSIM | {who} family | {who} PSNR / SSIM "
        f"| {who} - light (dB) | within 0.3 dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lt, df = r["light"], r["default"]
        lines.append(
            f"| {r['point']} | {lt['family']} | {lt['psnr']:.2f} / {lt['ssim']:.3f} "
            f"| {df['family']} | {df['psnr']:.2f} / {df['ssim']:.3f} "
            f"| {r['default_minus_light_db']:+.2f} | {'yes' if r['within_tolerance'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    rows = []
    for point in points:
        row = check_point(args.work, point, args.config, args.attack)
        print(
            f"{point}: light {row['light']['psnr']:.2f} dB ({row['light']['family']}), stronger "
            f"{row['default']['psnr']:.2f} dB ({row['default']['family']}), "
            f"{row['default_minus_light_db']:+.2f} dB",
            flush=True,
        )
        rows.append(row)
    record = {
        "tolerance_db": TOLERANCE_DB,
        "stronger": "library default" if args.config is None else str(args.config),
        "attack": args.attack,
        "points": rows,
        "all_within_tolerance": all(r["within_tolerance"] for r in rows),
    }
    text = markdown(rows, args.name, args.config, args.attack)
    write_results(args.out / f"attacker_strength_{args.name}", record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
