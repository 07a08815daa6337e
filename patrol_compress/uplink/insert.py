"""Where the quantizer goes: a new top-level child right after the split stage's last child.

As a child of the :class:`~patrol_compress.models.blocknet.BlockNet` (named
:data:`UPLINK_CHILD`) and the last member of the split stage's block, the
quantizer is part of the edge wherever the toolkit asks "what is the edge"
(:mod:`patrol_compress.models.split`): the Lipschitz blocks, the partitions,
the exporters and the attacks all see the quantized uplink without knowing
about it. Only a model that *is* a BlockNet takes it: a user's module seen
through a view runs its own forward, which would never call a child added to
the view.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet, _check_spec
from patrol_compress.models.split import block_shapes, check_split, edge_stage_blocks
from patrol_compress.uplink.quant import UplinkQuant, find_uplink

UPLINK_CHILD = "uplink"


def insert_uplink(
    model: BlockNet,
    split: int,
    bits: int,
    input_shape: tuple[int, int, int],
    init_quantile: float,
    noise: float = 0.0,
) -> UplinkQuant:
    """Add an :class:`UplinkQuant` for the edge output at ``split``; returns it."""
    check_split(model, split)
    if find_uplink(model) is not None:
        raise ModelError("the model already has an uplink quantizer")
    if UPLINK_CHILD in model._modules:
        raise ModelError(f"the model has a child named '{UPLINK_CHILD}' already")
    channels = block_shapes(edge_stage_blocks(model, split), input_shape)[-1][1][0]
    quant = UplinkQuant(channels, bits, init_quantile, noise)
    quant.to(next(model.parameters()).device)
    stage = model.stage_names[split - 1]
    spec = dict(model.block_spec)
    last = spec[stage][-1]
    children: OrderedDict[str, torch.nn.Module] = OrderedDict()
    for name, child in model._modules.items():
        if child is not None:
            children[name] = child
        if name == last:
            children[UPLINK_CHILD] = quant
    block_spec = [(b, (*c, UPLINK_CHILD) if b == stage else c) for b, c in model.block_spec]
    _check_spec(list(children), block_spec, model.stage_names)
    model._modules = children  # type: ignore[assignment]
    model.block_spec = block_spec
    return quant


def uplink_split(model: BlockNet) -> int | None:
    """The split whose output the quantizer codes (None: no quantizer): the stage whose
    block ends in :data:`UPLINK_CHILD`, where :func:`insert_uplink` put it."""
    for stage, children in model.block_spec:
        if UPLINK_CHILD in children:
            return model.stage_names.index(stage) + 1
    return None


def uplink_record(model: BlockNet, split: int) -> dict[str, object] | None:
    """What ``model.json`` records so a loader can put the quantizer back (None: fp32)."""
    quant = find_uplink(model)
    if quant is None:
        return None
    record: dict[str, object] = {
        "bits": quant.bits,
        "split": split,
        "init_quantile": quant.init_quantile,
    }
    if quant.noise:
        record["noise"] = quant.noise
    return record


@torch.no_grad()
def calibrate_uplink(
    model: BlockNet, split: int, images: torch.Tensor, again: bool = False
) -> bool:
    """Set the quantizer's range from ``images``' unquantized features (eval mode).

    Returns False when there is no quantizer or it was calibrated before (a
    resumed stage keeps the range it learned) and ``again`` is not set;
    ``again`` replaces a learned range (``patrol.uplink.recalibrate``).
    """
    from patrol_compress.models.split import split as split_model

    quant = find_uplink(model)
    if quant is None or (bool(quant.initialised) and not again):
        return False
    modes = [(m, m.training) for m in model.modules()]
    edge, _ = split_model(model, split)
    quant.emit = "bypass"
    try:
        for m, _ in modes:
            m.training = False
        features = edge(images.to(next(model.parameters()).device))
    finally:
        quant.emit = "fake"
        for m, was in modes:
            m.training = was
    quant.calibrate(features)
    return True


@torch.no_grad()
def measure_uplink(model: BlockNet, split: int, images: torch.Tensor) -> dict[str, object] | None:
    """The bound and the empirical entropy of the uplink's codes on ``images`` (None: fp32)."""
    import copy

    from patrol_compress.models.split import split as split_model
    from patrol_compress.uplink.entropy import uplink_report

    if find_uplink(model) is None:
        return None
    twin = copy.deepcopy(model).cpu().eval()
    edge, _ = split_model(twin, split)
    quant = find_uplink(edge)
    if quant is None:  # the quantizer sits at another split
        return None
    quant.emit_codes()
    codes = torch.cat([edge(images[i : i + 256]) for i in range(0, len(images), 256)])
    return uplink_report(codes.numpy(), quant.bits, quant.noise)
