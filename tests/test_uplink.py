"""The quantized uplink's parts: codes, decoding, packing, the bound, and pruning its channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.uplink import (
    UplinkPruner,
    UplinkQuant,
    bound_bits,
    empirical_entropy_bits,
    pack,
    packed_bytes,
    unpack,
    uplink_report,
)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codes_decode_to_exactly_what_training_computes(bits: int) -> None:
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 5, 3, 3)) * 3
    q = UplinkQuant(5, bits)
    q.calibrate(x)
    fake = q(x)
    codes = q.codes(x)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert torch.equal(q.decoder()(codes), fake)
    # Every value is one of 2**bits levels of its channel.
    for c in range(5):
        assert len(torch.unique(fake[:, c])) <= 2**bits


def test_rounding_passes_gradients_to_the_edge_and_the_range() -> None:
    x = (torch.rand(8, 3, 2, 2) * 2).requires_grad_(True)
    q = UplinkQuant(3, 2)
    q.calibrate(x.detach())
    q(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight through the rounding
    assert q.hi.grad is not None and q.hi.grad.abs().sum() > 0  # the range learns
    assert q.lo.grad is None  # non-negative features: the lower end stays 0


def test_signed_features_learn_both_ends() -> None:
    x = torch.randn(16, 2, 2, 2)
    q = UplinkQuant(2, 4)
    q.calibrate(x)
    assert bool(q.signed) and (q.lo < 0).all()
    q(x).sum().backward()
    assert q.lo.grad is not None


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_round_trips_and_counts_bytes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(11, 2, 2), dtype=np.uint8)
    blob = pack(codes, bits)
    assert len(blob) == packed_bytes(codes.size, bits) == -(-codes.size * bits // 8)
    assert np.array_equal(unpack(blob, bits, codes.shape), codes)
    if bits < 8:
        with pytest.raises(ValueError, match="above"):
            pack(np.full(3, 2**bits, dtype=np.uint8), bits)


def test_bound_and_entropy_estimate() -> None:
    assert bound_bits((64, 2, 2), 4) == 1024
    constant = np.zeros((50, 2, 1, 1), dtype=np.uint8)
    assert empirical_entropy_bits(constant) == 0.0
    coin = (np.arange(40) % 2).astype(np.uint8).reshape(40, 1, 1, 1)
    coin = np.repeat(coin, 2, axis=1)  # two positions, each a fair binary variable
    assert empirical_entropy_bits(coin) == pytest.approx(2.0)
    report = uplink_report(coin, 1)
    assert report["uplink_bits_max"] == 2 and "estimate" in report["entropy_note"]


def test_pruning_the_stream_narrows_the_uplink_range() -> None:
    """Registered with torch-pruning like a BN: removing a channel of the conv feeding the
    uplink removes that channel's range, and the codes of the kept channels do not change."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), UplinkQuant(6, 4), nn.Conv2d(6, 2, 1))
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        net[2].calibrate(net[1](net[0](x)))
        before = net[2].codes(net[1](net[0](x)))
    graph = tp.DependencyGraph().build_dependency(
        net, example_inputs=x, customized_pruners={UplinkQuant: UplinkPruner()}
    )
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[1, 4])
    group.prune()
    assert net[2].hi.numel() == 4 and net[3].in_channels == 4
    with torch.no_grad():
        after = net[2].codes(net[1](net[0](x)))
    assert torch.equal(after, before[:, [0, 2, 3, 5]])
