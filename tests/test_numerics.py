"""Numerical robustness: the NaN/Inf guard of the training loop, zero denominators in L_lip."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.errors import TrainingError
from patrol_compress.regularizers import fused_lipschitz
from patrol_compress.train.loop import EpochReporter, run_stage


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


# --------------------------------------------------------------------------- NaN guard


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, bad: float
) -> None:
    """Data that turns the loss NaN/Inf in epoch 2: the stage stops, epoch 1 stays on disk."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    folder = tmp_path / "checkpoints"
    on_disk: dict[str, str] = {}
    good: dict[str, torch.Tensor] = {}

    def epoch_fn(epoch: int, rep: EpochReporter) -> None:
        if epoch == 1:  # epoch 1's checkpoint is written before epoch 2 starts
            on_disk.update(snapshot(folder))
            good.update({k: v.clone() for k, v in model.state_dict().items()})
        for step in range(2):
            inputs = x.clone()
            if epoch == 1 and step == 1:
                inputs[0, 0] = bad  # a poisoned sample in epoch 2
            loss = F.mse_loss(model(inputs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rep.step(len(inputs), {"loss": float(loss.detach())})

    name = "nan" if bad != bad else "inf"
    with pytest.raises(TrainingError) as info:
        run_stage("toy", folder, 3, 2, epoch_fn, {"model": model}, {"opt": opt}, False, quiet=True)
    assert str(info.value) == (
        f"loss 'loss' became {name} at step 2; stopped, the last good checkpoint is kept "
        "(lower the learning rate?)"
    )
    assert on_disk and set(on_disk) == {"epoch-0001.safetensors", "last.json"}
    assert snapshot(folder) == on_disk  # byte-identical: the poisoned epoch wrote nothing

    # Resuming restores epoch 1's finite weights (the in-memory model took the bad step).
    fresh = nn.Linear(4, 1)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.05)
    history = run_stage(
        "toy", folder, 1, 2, epoch_fn, {"model": fresh}, {"opt": fresh_opt}, True, quiet=True
    )
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values())
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, good[key]) and torch.isfinite(value).all()
    assert snapshot(folder) == on_disk


# --------------------------------------------------------------------------- Lipschitz guard


def _conv(seed: int, zero: bool = False, bias: float = 0.0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    assert conv.bias is not None
    with torch.no_grad():
        if zero:
            conv.weight.zero_()
        conv.bias.fill_(bias)
    return conv


Case = Callable[[], tuple[list[nn.Module], float, int]]
CASES: dict[str, Case] = {
    # name: (blocks, sigma, index of the block whose denominator is exactly 0)
    # delta == 0: block 1 divides by ||delta||_1 = 0 (and its difference is 0 too)
    "zero-delta": lambda: ([nn.Sequential(_conv(1), nn.ReLU()), _conv(2)], 0.0, 0),
    # an all-zero block: both halves leave it identical, block 2 divides by 0
    "all-zero-block": lambda: ([_conv(1, zero=True), _conv(2)], 0.1, 1),
    # a dead ReLU (large negative bias): the same through the activation
    "dead-relu": lambda: ([nn.Sequential(_conv(1, bias=-1e3), nn.ReLU()), _conv(2)], 0.1, 1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_lipschitz_ratio_with_a_zero_denominator_is_finite(case: str, dtype: torch.dtype) -> None:
    blocks, sigma, zero_at = CASES[case]()
    torch.manual_seed(3)
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out, loss, ks = fused_lipschitz(blocks, x, [1.0, 1.0], sigma, fraction=0.5)
    assert torch.isfinite(loss) and all(k == k and abs(k) < float("inf") for k in ks)
    assert ks[zero_at] == 0.0  # 0 / (0 + EPS), not 0 / 0
    (loss + out.float().sum()).backward()
    grads = [p.grad for b in blocks for p in b.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()
