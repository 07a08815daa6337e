"""Where PATROL's leakage comes from: each privacy term alone, from the trade-off's target.

Builds ``masks + Lipschitz`` (adversary off) or ``masks + adversary`` (Lipschitz
off) from the target of a ``privacy_tradeoff.py`` work folder (same recipe, same
budget steering and recovery), then attacks it with the same suite and settings
as the trade-off (pass the trade-off's attack flags after ``--``):

    python benchmarks/privacy_ablation.py lipschitz --work WORK -- --dataset fashion-mnist \\
        --recipe recipes/fashion_mnist_small_recovery12.yaml --attack-images 12000 \\
        --base-width 64 --min-width 16 --eval-images 500

The point goes to ``WORK/<dataset>/points-ablation/<term>/attack.json`` (the
report reads it beside the trade-off's points).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import privacy_tradeoff as pt  # noqa: E402

from patrol_compress.recipe import load_recipe, with_privacy_terms  # noqa: E402

PATCHES = {
    "lipschitz": {"adversarial": {"enabled": False}},
    "adversarial": {"lipschitz": {"enabled": False}},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("term", choices=sorted(PATCHES))
    p.add_argument("--work", type=Path, default=pt.ROOT / "runs" / "tradeoff")
    own = p.parse_args(argv[:split_at])
    args = pt.parse_args([*argv[split_at + 1 :], "--work", str(own.work)])
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {text}", flush=True)

    recipe = with_privacy_terms(load_recipe(args.recipe or pt.RECIPES[args.dataset]))
    work = own.work / args.dataset
    target = work / "patrol" / "target"
    if not (target / "model.safetensors").is_file():
        raise SystemExit(f"{target}: run privacy_tradeoff.py with this --work first")
    derived = pt.derived(recipe, f"masks_{own.term}", target, **PATCHES[own.term])
    run = pt.ensure_prune(derived, work / f"ablation_{own.term}", log)
    cfg = pt.attack_config(args, recipe.attack)
    attacks = [a for a in args.attacks.split(",") if a]
    pt.attack_point(
        run, recipe.patrol.split, cfg, attacks, work / "points-ablation" / own.term, log
    )
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
