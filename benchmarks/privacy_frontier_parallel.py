"""Run a frontier as N processes: targets, then N shards at once, then collect.

Each frontier point (prune + attack suite) is small next to a GPU, so one
process leaves most of it idle. N processes on one GPU (with NVIDIA MPS,
started by ``nvidia-cuda-mps-control -d``, so their kernels overlap) finished
all 36 points of the two Fashion-MNIST settings in about 13 minutes on an
H200. That run used a throwaway driver doing these same three stages; this
launcher is the repository's version of it:

    python benchmarks/privacy_frontier_parallel.py --shards 9 -- \\
        --dataset fashion-mnist --name fashion32 --methods pruning-only,patrol \\
        --knob recovery_epochs=4,8,12 --seeds 0,1 --target-seeds 0,1

Everything after ``--`` goes to every ``benchmarks/privacy_frontier.py`` call
(``patrol-compress frontier`` with the benchmark's output folder) unchanged (it
must not contain ``--stage`` or ``--shard``). The targets are trained first,
in one process, so shards never race to create them; every shard writes its
log to ``--logs``; the aggregation runs only when every shard succeeded, and
the exit status is non-zero otherwise (a rerun resumes what was finished).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRONTIER = HERE / "privacy_frontier.py"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split_at = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--shards", type=int, default=4, help="points processes run at once")
    p.add_argument("--logs", type=Path, default=HERE.parent / "runs" / "frontier-logs")
    own = p.parse_args(argv[:split_at])
    rest = argv[split_at + 1 :]
    if own.shards < 1:
        p.error("--shards: expected at least 1")
    clash = [a for a in rest if a.split("=")[0] in ("--stage", "--shard")]
    if clash:
        p.error(f"{clash[0]}: the launcher sets --stage and --shard itself")
    return own, rest


def run(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(FRONTIER), *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def main(argv: list[str] | None = None) -> int:
    own, rest = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

    if run([*rest, "--stage", "targets"], own.logs / "targets.log").wait() != 0:
        say(f"training the targets failed; see {own.logs / 'targets.log'}")
        return 1
    say("targets ready")
    n = own.shards
    procs = [
        run([*rest, "--stage", "points", "--shard", f"{i}/{n}"], own.logs / f"shard-{i}.log")
        for i in range(n)
    ]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        say(f"shards {failed} failed; see {own.logs}/shard-N.log (a rerun resumes finished points)")
        return 1
    say(f"{own.shards} shards done")
    code = run([*rest, "--stage", "collect"], own.logs / "collect.log").wait()
    say("collected" if code == 0 else f"collect failed; see {own.logs / 'collect.log'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
