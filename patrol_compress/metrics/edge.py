"""What the edge at split K costs: parameters, weight bytes, MACs and bytes sent per image.

Recorded in a run's ``metrics.json`` (before and after pruning) and in every
``attack.json``, so each point of the privacy-utility plane states the size of
the edge it attacked. ``uplink_bits_max`` is what one image's uplink can
carry at most: values x bits per value (32 for fp32, the quantizer's bits for
a quantized uplink, whose values are sent packed: ``bytes_sent``).
"""

from __future__ import annotations

from typing import Any

import torch

from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import edge_modules, split


def value_bits(model: BlockNet, k: int) -> int:
    """Bits per crossing value at split ``k``: the uplink quantizer's, if the edge ends in one."""
    from patrol_compress.uplink import find_uplink

    for top in edge_modules(model, k)[-1:]:
        quant = find_uplink(top)
        if quant is not None:
            return quant.bits
    return 32


def sent(values: int, bits: int) -> dict[str, int]:
    """Bytes on the wire and the bound, for ``values`` values of ``bits`` bits per image."""
    from patrol_compress.uplink import packed_bytes

    wire = values * 4 if bits == 32 else packed_bytes(values, bits)
    return {"bytes_sent": wire, "uplink_bits_max": values * bits, "uplink_value_bits": bits}


def edge_report(model: BlockNet, k: int, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """params, weight bytes, MACs and bytes sent per image of the edge at split k, per block too."""
    was = model.training
    model.eval()
    edge, _ = split(model, k)
    params = count_params(edge_modules(model, k))
    with torch.no_grad():
        out = edge(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    per_block = []
    for j in range(1, k + 1):
        e_j, _ = split(model, j)
        with torch.no_grad():
            o = e_j(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
        per_block.append(
            {
                "split": j,
                "params": count_params(edge_modules(model, j)),
                "macs": count_macs(e_j, input_shape),
                **sent(int(o[0].numel()), value_bits(model, j)),
                "output_shape": list(o.shape[1:]),
            }
        )
    model.train(was)
    return {
        "params": params,
        "weight_bytes": params * 4,
        "macs": count_macs(edge, input_shape),
        **sent(int(out[0].numel()), value_bits(model, k)),
        "output_shape": list(out.shape[1:]),
        "per_block": per_block,
    }
