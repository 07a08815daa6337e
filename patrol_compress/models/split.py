"""Split a BlockNet into edge and cloud partitions at stage K.

The edge holds the stem and the first K stages, the cloud the rest including
the head. Both share the original's modules, so ``cloud(edge(x)) == model(x)``
bit for bit, and neither changes any module's train/eval mode (a fresh container
would be in training mode and the exporter then flips shared BNs; see
``docs/measurements.md``, "Splitting and export"). For export, deep-copy the
partitions first.
"""

from __future__ import annotations

from patrol_compress.models.blocknet import BlockNet, check_split


def split(model: BlockNet, k: int) -> tuple[BlockNet, BlockNet]:
    check_split(model, k)
    edge_names = model.edge_blocks(k)
    cloud_names = [b for b in model.block_names if b not in edge_names]
    return model.sub_net(edge_names), model.sub_net(cloud_names)
