"""How long the default attack takes, and whether a faster suite kept its strength.

For each ``--point NAME=RUN[:SPLIT]`` this script attacks the edge twice, one
torch thread each time, on the same evaluation images:

* **before**: the attack suite of another commit of this repository
  (``--before``, default ``caee2d9``, the last commit before the suite was
  reworked), exported with ``git archive`` into a scratch folder and run
  there as ``python -m patrol_compress attack`` (nothing of it is imported here);
* **after**: this checkout's suite (``patrol-compress attack``).

Both with the same attack settings file (``--config``; default: none, i.e.
each version's library defaults) and the same attacks (``--attacks``). It
prints, per point, the minutes each took and their strongest PSNR/SSIM, and
writes ``attack_speed.{json,md}`` with the provenance of both runs.

    python benchmarks/attack_speed.py --point quickstart=runs/quickstart \\
        --point quickstart-split2=runs/quickstart/target:2

Before-runs are kept in ``--work`` and reused (they take hours on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--point", action="append", required=True, metavar="NAME=RUN[:SPLIT]")
    p.add_argument("--before", default="caee2d9", help="commit of the 'before' attack suite")
    p.add_argument("--config", type=Path, default=None, help="attack settings for both")
    p.add_argument("--attacks", default="blackbox,whitebox,adaptive")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "attack_speed")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="attack_speed")
    p.add_argument("--skip-before", action="store_true", help="only time this checkout")
    return p.parse_args(argv)


def old_source(commit: str, work: Path) -> Path:
    """The package as of ``commit``, unpacked once under ``work``."""
    folder = work / f"src-{commit}"
    if (folder / "patrol_compress").is_dir():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "patrol_compress", "exporters"],
        capture_output=True,
        check=True,
    ).stdout
    tar = folder / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as fh:
        fh.extractall(folder, filter="data")
    tar.unlink()
    # The old package maps exporters/ to patrol_compress.exporters by install; do it by link.
    (folder / "patrol_compress" / "exporters").symlink_to((folder / "exporters").resolve())
    return folder


def attack(
    run: str, split: int | None, out: Path, args: argparse.Namespace, source: Path | None
) -> tuple[dict[str, Any], float]:
    """Run one attack in its own process (one thread); (attack.json, seconds)."""
    if (out / "attack.json").is_file() and (out / "seconds.json").is_file():
        return (
            json.loads((out / "attack.json").read_text()),
            float(json.loads((out / "seconds.json").read_text())["seconds"]),
        )
    out = out.resolve()
    cmd = [sys.executable, "-m", "patrol_compress", "attack", str(Path(run).resolve())]
    cmd += ["--attack", args.attacks, "--out", str(out), "--threads", "1", "--force"]
    if split is not None:
        cmd += ["--split", str(split)]
    if args.config is not None:
        cmd += ["--config", str(args.config.resolve())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # The old package is imported from its own folder: ``-m`` puts the working directory
    # first on sys.path, ahead of this checkout's editable install.
    cwd = source if source is not None else ROOT
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        subprocess.run(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    (out / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return json.loads((out / "attack.json").read_text()), seconds


def strongest(report: dict[str, Any]) -> dict[str, Any]:
    s = report["strongest"]
    return {
        "attack": s["attack"],
        "family": s.get("family"),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "images": report["attacks"][s["attack"]].get("images"),
        "eval_max_psnr": max(a["psnr"] for a in report["attacks"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    from patrol_compress.io import write_json, write_text
    from patrol_compress.provenance import command_line, provenance

    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/" + command_line(
        ["attack_speed.py", *(sys.argv[1:] if argv is None else argv)]
    )
    source = None if args.skip_before else old_source(args.before, args.work)
    rows = []
    for spec in args.point:
        name, _, where = spec.partition("=")
        run, _, k = where.partition(":")
        split = int(k) if k else None
        row: dict[str, Any] = {"point": name, "run": run, "split": split}
        for side, src in (("before", source), ("after", None)):
            if side == "before" and src is None:
                continue
            report, seconds = attack(run, split, args.work / name / side, args, src)
            row[side] = {"minutes": round(seconds / 60, 2), **strongest(report)}
            print(f"{name} {side}: {seconds / 60:.1f} min, {row[side]}", flush=True)
        if "before" in row:
            row["psnr_change_db"] = row["after"]["psnr"] - row["before"]["psnr"]
            row["speedup"] = row["before"]["minutes"] / max(row["after"]["minutes"], 1e-9)
        rows.append(row)
    result = {
        "command": command,
        "before_commit": None if args.skip_before else args.before,
        "attacks": args.attacks,
        "config": None if args.config is None else str(args.config),
        "points": rows,
        "provenance": provenance(command),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    lines = [
        "# Attack speed and strength: before and after",
        "",
        f"Command: `{command}`; one torch thread per attack; before = commit "
        f"`{result['before_commit']}`, after = this checkout "
        f"(`{result['provenance']['commit']}`).",
        "",
        "| point | before min | before strongest | after min | after strongest | PSNR change |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r.get("before"), r["after"]
        before = "-" if b is None else f"{b['minutes']:.1f}"
        b_s = (
            "-"
            if b is None
            else f"{b['attack']}/{b['family']} {b['psnr']:.2f} dB / {b['ssim']:.3f} "
            f"({b['images']} images)"
        )
        change = "-" if b is None else f"{r['psnr_change_db']:+.2f} dB"
        lines.append(
            f"| {r['point']} | {before} | {b_s} | {a['minutes']:.1f} | {a['attack']}/"
            f"{a['family']} {a['psnr']:.2f} dB / {a['ssim']:.3f} ({a['images']} images) | "
            f"{change} |"
        )
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
