"""The committed privacy frontiers: ``patrol-compress frontier`` with the benchmark's defaults.

The frontier is a product command (:mod:`patrol_compress.frontier`); this
script only fixes where the benchmark's results go (``benchmarks/results``,
named ``privacy_frontier_<name>.*``), one torch thread, and a recipe by
dataset name, then hands every other option to the command unchanged:

    python benchmarks/privacy_frontier.py --dataset fashion-mnist --name fashion32 \\
        --methods pruning-only,patrol --knob recovery_epochs=4,8,12 \\
        --seeds 0,1 --target-seeds 0,1

is ``patrol-compress frontier recipes/fashion_mnist_small.yaml --name fashion32
--out benchmarks/results --work runs/frontier/fashion32 --threads 1 ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {
    "quickstart": ROOT / "recipes" / "quickstart.yaml",
    "fashion-mnist": ROOT / "recipes" / "fashion_mnist_small.yaml",
}


def command(argv: list[str]) -> list[str]:
    """The ``patrol-compress`` arguments this script runs for ``argv``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist")
    p.add_argument("--recipe", type=Path, default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", default="1")
    own, rest = p.parse_known_args(argv)
    name = own.name or own.dataset.replace("-", "_")
    work = own.work or ROOT / "runs" / "frontier" / name
    recipe = own.recipe or RECIPES[own.dataset]
    return [
        "frontier", _short(recipe), "--name", name, "--work", _short(work),
        "--out", _short(own.out), "--stem", f"privacy_frontier_{name}",
        "--threads", own.threads, *rest,
    ]  # fmt: skip


def _short(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it: the command a
    results file records then reproduces from any checkout, not only this machine's."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    from patrol_compress.cli.app import app

    args = command(sys.argv[1:] if argv is None else argv)
    try:
        app(args, prog_name="patrol-compress")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
