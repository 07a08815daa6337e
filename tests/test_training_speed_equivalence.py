"""The PATROL step's speed-ups compute what the plain computation does (to float tolerance).

Each faster path is checked against the straightforward one it replaces:
the transposed convolution with its own weight gradient against
``nn.ConvTranspose2d``; the surrogate's training step (in-place activations,
channels-last) against the same net built from plain layers in NCHW; the
folded, sliced attacker of a PATROL epoch (:func:`frozen_inverter`) against the
surrogate in eval mode; and a whole PATROL fine-tune with the frozen attacker
against one that uses the surrogate itself, as the code did before.
No timing here: ``benchmarks/training_overhead.py`` measures the speed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from patrol_compress.models.inversion import (
    ConvTranspose2d,
    FrozenInverter,
    InversionNet,
    frozen_inverter,
    reconstruction_l2,
)
from patrol_compress.pruning.masks import ChannelMask, MaskedNorm

from .helpers import tiny_recipe

SHAPES = [((3, 32, 32), (8, 16, 16)), ((8, 16, 16), (16, 8, 8)), ((16, 8, 8), (32, 4, 4))]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rtol * scale


def _plain_copy(net: nn.Module) -> nn.Module:
    """``net`` rebuilt from torch's own layers: nn.ConvTranspose2d, LeakyReLU not in place."""
    ref = copy.deepcopy(net)
    for name, m in list(ref.named_modules()):
        parent = ref.get_submodule(name.rpartition(".")[0]) if "." in name else ref
        child = name.rpartition(".")[2]
        if isinstance(m, ConvTranspose2d):
            plain = nn.ConvTranspose2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,  # type: ignore[arg-type]
                m.stride,  # type: ignore[arg-type]
                m.padding,  # type: ignore[arg-type]
                m.output_padding,  # type: ignore[arg-type]
                m.groups,
                m.bias is not None,
                m.dilation,  # type: ignore[arg-type]
            )
            plain.load_state_dict(m.state_dict())
            setattr(parent, child, plain)
        elif isinstance(m, nn.LeakyReLU):
            setattr(parent, child, nn.LeakyReLU(m.negative_slope))
    return ref


@pytest.mark.parametrize(
    "conf",
    [
        dict(kernel_size=4, stride=2, padding=1),
        dict(kernel_size=3, stride=2, padding=1, output_padding=1),
        dict(kernel_size=3, stride=1, padding=2, dilation=2, bias=False),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_transpose_gradients_match_torch(conf: dict[str, int], channels_last: bool) -> None:
    fast = ConvTranspose2d(6, 5, **conf)  # type: ignore[arg-type]
    plain = nn.ConvTranspose2d(6, 5, **conf)  # type: ignore[arg-type]
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 6, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    outs = []
    for m in (fast, plain):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = [xi.grad, m.weight.grad] + ([m.bias.grad] if m.bias is not None else [])
        outs.append((y.detach(), grads))
    _close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert a is not None and b is not None
        _close(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_surrogate_training_steps_match_plain_layers(channels_last: bool) -> None:
    """Three SGD steps of the surrogate's fit: same losses, gradients and weights as plain
    torch layers in NCHW (SGD, not Adam: Adam turns the rounding noise of the zero gradient
    of a conv bias followed by BatchNorm into full-size steps)."""
    net = InversionNet(SHAPES, max_width=16, refine=0, min_width=8)
    ref = _plain_copy(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(6, 3, 32, 32, generator=gen), torch.randn(6, 32, 4, 4, generator=gen))]
    batches *= 3
    runs: list[list[tuple[float, dict[str, torch.Tensor]]]] = []
    for m in (net, ref):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        run = []
        for x, z in batches:
            loss = reconstruction_l2(x, m(z))
            opt.zero_grad()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            opt.step()
            run.append((float(loss.detach()), grads))
        runs.append(run)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(*runs, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        assert grads_a.keys() == grads_b.keys()
        step_max = max(float(g.abs().max()) for g in grads_b.values())
        for n, g in grads_a.items():
            # Relative to the parameter's own gradient, plus float noise of the step's scale
            # (a conv bias followed by BatchNorm has a zero gradient made of cancelling sums).
            tol = 1e-4 * float(grads_b[n].abs().max()) + 1e-5 * step_max
            assert float((g - grads_b[n]).abs().max()) <= tol, n
    ref_state = ref.state_dict()
    for k, a in net.state_dict().items():
        if a.is_floating_point():
            _close(a, ref_state[k], rtol=1e-4)


@pytest.mark.parametrize("slice_bytes", [1 << 30, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_inverter_matches_eval_surrogate(slice_bytes: int, channels_last: bool) -> None:
    net = InversionNet(SHAPES, max_width=16, refine=1, min_width=8)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net.eval()
    frozen = frozen_inverter(net)
    frozen.slice_bytes = slice_bytes  # 1 byte: one row per slice
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.rand(5, 3, 32, 32)
    z = torch.randn(5, 32, 4, 4)
    results = []
    for m in (frozen, net):
        zi = z.clone().requires_grad_()
        loss = reconstruction_l2(x, m(zi))
        loss.backward()
        results.append((float(loss.detach()), zi.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] is not None and results[1][1] is not None
    _close(results[0][1], results[1][1])
    assert net.net[1].running_mean.abs().sum() > 0  # the original keeps its BNs
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_frozen_inverter_never_slices_batch_statistics() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    frozen = frozen_inverter(net)
    assert isinstance(frozen, FrozenInverter) and not frozen.sliceable
    frozen.slice_bytes = 1
    x = torch.randn(6, 3, 8, 8)
    _close(frozen(x), net.eval()(x))


def _finetune(tmp_path: Path, name: str) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    from patrol_compress.data import build_data
    from patrol_compress.pipeline import fresh_model
    from patrol_compress.pruning.patrol import PatrolParts, build_surrogate, patrol_finetune
    from patrol_compress.pruning.structure import make_structure

    recipe = tiny_recipe(tmp_path, epochs=2, budget=None)
    cfg = recipe.patrol
    data = build_data(recipe.data)
    shape = (data.channels, data.image_size, data.image_size)
    torch.manual_seed(0)
    model = fresh_model(recipe, data)
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    structure = make_structure(cfg.granularity, model, cfg.split, cfg.mask_init, example)
    surrogate = build_surrogate(model, cfg.split, shape, cfg.adversarial.adversary_width)
    torch.manual_seed(1)
    history, _ = patrol_finetune(
        PatrolParts(model, structure, surrogate), data, recipe, tmp_path / name, None, False, True
    )
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_patrol_finetune_with_frozen_attacker_matches_the_surrogate_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs of PATROL: the frozen attacker gives the losses, weights and masks that
    the eval-mode surrogate gives (the code before :func:`frozen_inverter`)."""
    from patrol_compress.pruning import surrogate

    fast_hist, fast_state = _finetune(tmp_path, "fast")

    def plain(net: nn.Module) -> nn.Module:
        with torch.random.fork_rng():  # building layers draws initial weights
            return _plain_copy(net).eval().requires_grad_(False)

    monkeypatch.setattr(surrogate, "frozen_inverter", plain)
    ref_hist, ref_state = _finetune(tmp_path, "ref")
    assert len(fast_hist) == len(ref_hist) == 2
    for a, b in zip(fast_hist, ref_hist, strict=True):
        for key in ("loss", "adv", "lip", "ce"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for k, a in fast_state.items():
        if a.is_floating_point():
            _close(a, ref_state[k], rtol=1e-3)
    masks = [k for k in fast_state if ".mask." in k]
    assert masks


@pytest.mark.parametrize(
    ("dims", "channels", "affine"),
    [(4, 6, True), (4, 1, True), (4, 6, False), (2, 6, True)],
)
def test_masked_eval_norm_matches_bn_then_mask(dims: int, channels: int, affine: bool) -> None:
    """Eval-mode MaskedNorm (one batch_norm with the mask folded in) against BN then mask."""
    bn: nn.modules.batchnorm._BatchNorm = (
        nn.BatchNorm2d(6, affine=affine) if dims == 4 else nn.BatchNorm1d(6, affine=affine)
    )
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    masked = MaskedNorm(bn, ChannelMask(channels))
    with torch.no_grad():
        masked.mask.weight.uniform_(-1, 1)
    masked.eval()
    shape = (5, 6, 4, 3) if dims == 4 else (5, 6)
    x = torch.randn(*shape)
    out = []
    for fused in (True, False):
        for p in masked.parameters():
            p.grad = None
        xi = x.clone().requires_grad_()
        handle = None if fused else bn.register_forward_hook(lambda *_: None)  # plain path
        y = masked(xi)
        if handle is not None:
            handle.remove()
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out.append((y.detach(), xi.grad, [p.grad for p in masked.parameters()]))
    _close(out[0][0], out[1][0])
    assert out[0][1] is not None and out[1][1] is not None
    _close(out[0][1], out[1][1])
    for a, b in zip(out[0][2], out[1][2], strict=True):
        assert a is not None and b is not None
        _close(a, b)


def test_masked_norm_hooks_still_see_both_modules() -> None:
    masked = MaskedNorm(nn.BatchNorm2d(3), ChannelMask(3)).eval()
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, *_: seen.append(m)) for m in masked.modules()]
    masked(torch.randn(2, 3, 4, 4))
    for h in handles:
        h.remove()
    assert set(seen) == {masked, masked.bn, masked.mask}
