"""The floors an attack setting is judged against, for a run's data; attacks nothing.

Every attack report carries the floors it was judged by (mean image, label
only, and for a ``blackbox.loss: mix`` attacker the label-only image fitted
to that loss: :mod:`patrol_compress.attacks.floors`). Attack reports written
before a floor existed lack it, and the floors depend on the data and the
attack setting only, never on the model attacked; this script computes them
through the library for the evaluation images ``patrol-compress attack RUN
--config CONFIG`` scores::

    python benchmarks/label_floor.py --run runs/frontier/fashion32_fresh/runs/POINT \\
        --config benchmarks/recipes/attack_cpu_ssim_fashion32.yaml --name fashion32_ssim

Results: ``benchmarks/results/label_floor_<name>.{json,md}`` with provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from patrol_compress.attacks.evaluate import find_recipe, recipe_floors
from patrol_compress.config.privacy import load_attack_config
from patrol_compress.provenance import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--run", type=Path, required=True, help="a run folder (for its recipe's data)")
    p.add_argument("--config", type=Path, required=True, help="the attack setting")
    p.add_argument("--name", required=True, help="results file stem suffix")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    floors = recipe_floors(find_recipe(args.run), load_attack_config(args.config))
    seconds = round(time.perf_counter() - start, 1)
    lines = [
        f"# Floors of `{args.config.as_posix()}`: {args.name}",
        "",
        "Guesses that need no features, scored on the evaluation images the attack scores.",
        "",
        "| floor | PSNR dB | SSIM |",
        "|---|---|---|",
        *(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.3f} |" for k, v in floors.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    record = {
        "run": str(args.run),
        "config": str(args.config),
        "floors": floors,
        "seconds": seconds,
    }
    write_results(args.out / f"label_floor_{args.name}", record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
