"""Leakage-aware ranking of the crossing channels (``patrol.uplink.rank: leakage``).

An uplink budget (``patrol.budget.uplink_bits``) removes crossing channels
until the uplink fits. By default it removes the lowest-masked ones: the
channels the task needs least. Issue 23's option is to remove, instead, the
channels a decoder uses most per unit of what the task loses: each crossing
channel is weighted by ``leak / task`` and the uplink plan ranks by mask
score divided by that weight (the greedy knapsack rule the MAC ranking uses,
:func:`~patrol_compress.pruning.budget.cost_shares`, with leakage as the
cost).

How the two are measured, once, at the start of the PATROL stage, on the
unpruned network (masks at their start) and on the defender's own training
images (never the evaluation images):

* ``leak``: a probe decoder (the attack suite's ``upsample`` family, the
  frontier's black-box default) is fitted to invert what crosses the split;
  a channel's leak is how much its reconstruction error rises when that
  channel is replaced by its mean over the images.
* ``task``: how much the cloud's output moves when the same channel is
  replaced by its mean, relative to how much the output varies over the
  images. The output, not a loss: it needs no labels, so one measure serves
  classification and re-identification alike.

Mean replacement, not zero: a channel set to its mean carries no information
about the image but stays in the distribution the decoder and the cloud were
fitted on, so the measure reads information used, not a shift of the input
(zeroing a channel with a large mean would look like a large "use" to both).

Why measured once and not per epoch: refitting the probe each epoch would
cost a decoder fit per epoch, and the measure on the unpruned network is a
deterministic function of the target and the recipe's seed, so a resumed
stage recomputes the same weights before it loads its checkpoint. The masks
still evolve under FISTA, so the ranking is re-read each epoch as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.errors import ModelError
from patrol_compress.models.blocknet import BlockNet

PROBE_STEPS = 200
"""Adam steps of the probe decoder (batch :data:`PROBE_BATCH`): a short fit, since the
ranking needs only the order of the channels' use, not a strong attack."""

PROBE_WIDTH = 32
"""The probe's ``base_width`` (the attack suite's default is 128): kept small so the
measure costs seconds to a few minutes on CPU, not a point's worth of time."""

PROBE_SIDE = 16
"""Images are scored at most this many pixels a side (area-downsampled): the ranking asks
which channels carry the image's content, and each octave above costs the probe about
four times more (at 32 px, 200 steps took 51 s on one core of this machine; at 16 px the
whole measure takes seconds). Whether finer detail would change the order is not measured."""

PROBE_BATCH = 64
PROBE_LR = 2e-3
SCORE_IMAGES = 512
"""Images (the first of those given) each channel's ablation is scored on."""

LEAK_FLOOR = 0.05
TASK_FLOOR = 1e-3
"""Added to each channel's leak and task use, as fractions of their means over the
crossing channels, before the ratio. A channel the cloud does not use (task near 0)
then weighs at least ``LEAK_FLOOR / TASK_FLOOR`` times the mean ratio, so it goes first:
it spends uplink bits for nothing, even when the probe reads nothing from it either."""


@dataclass
class LeakageRank:
    """Per crossing channel: the measured leak and task use, and the ranking weight."""

    weights: list[torch.Tensor]
    """Per mask group (root channel order): leak / task, geometric mean 1 over the
    crossing channels; 1 for groups that do not cross."""
    channels: list[dict[str, float | int]] = field(default_factory=list)
    """One record per crossing channel (for the run's summary)."""
    probe_mse: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "probe": f"upsample decoder, {PROBE_STEPS} steps",
            "probe_mse": self.probe_mse,
            "channels": self.channels,
        }


def crossing_index(
    graph: tp.DependencyGraph, group: tp.dependency.Group, cloud: set[int], channels: int
) -> dict[int, int]:
    """Root channel index -> index in the crossing tensor, for one crossing group.

    Read from the item that prunes the uplink quantizer, or else a cloud layer's
    input channels: its indices are positions in the tensor that crosses.
    """
    from patrol_compress.uplink.quant import UplinkQuant

    for item in group:
        module = item.dep.target.module
        reads = isinstance(module, UplinkQuant) or (
            id(module) in cloud and graph.is_in_channel_pruning_fn(item.dep.handler)
        )
        if reads and all(0 <= int(i) < channels for i in item.idxs):
            return {int(r): int(i) for r, i in zip(item.root_idxs, item.idxs, strict=True)}
    raise ModelError(
        "patrol.uplink.rank: leakage cannot tell which crossing channels a group owns "
        "(no layer after the split reads them as channels)"
    )


def _fit_probe(z: torch.Tensor, images: torch.Tensor, seed: int) -> nn.Module:
    """The attack suite's ``upsample`` decoder, fitted on (features, image) pairs."""
    from patrol_compress.attacks.decoders import DecoderSpec, upsample
    from patrol_compress.config.privacy import BlackboxConfig

    spec = DecoderSpec(
        shapes=[],
        feature_shape=(z.shape[1], z.shape[2], z.shape[3]),
        image_shape=(images.shape[1], images.shape[2], images.shape[3]),
        mean=z.mean(dim=(0, 2, 3)),
        std=z.std(dim=(0, 2, 3)),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        built = upsample(spec, BlackboxConfig(base_width=PROBE_WIDTH))
    if built is None:  # the family applies to every map; the registry's type allows None
        raise ModelError("the upsample decoder family does not apply to this feature map")
    probe: nn.Module = built
    opt = torch.optim.Adam(probe.parameters(), lr=PROBE_LR)
    probe.train()
    for _ in range(PROBE_STEPS):
        pick = torch.randint(0, len(z), (min(PROBE_BATCH, len(z)),), generator=gen)
        loss = nn.functional.mse_loss(probe(z[pick]), images[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


def _shrink(images: torch.Tensor) -> torch.Tensor:
    """``images`` area-downsampled so neither side exceeds :data:`PROBE_SIDE`."""
    h, w = images.shape[2], images.shape[3]
    f = max(h, w) / PROBE_SIDE
    if f <= 1:
        return images
    size = (max(1, round(h / f)), max(1, round(w / f)))
    return nn.functional.interpolate(images, size=size, mode="area")


def _batched(fn: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(z[i : i + 256]) for i in range(0, len(z), 256)])


def _logits(out: object) -> torch.Tensor:
    """The cloud's output as one tensor (a training-mode head may return several)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the cloud returned {type(out).__name__}, expected a tensor")
    return out.flatten(1).float()


def measure_leakage(
    model: BlockNet,
    split: int,
    graph: tp.DependencyGraph,
    groups: list[tp.dependency.Group],
    crossing: tuple[int, ...],
    images: torch.Tensor,
    seed: int = 0,
) -> LeakageRank:
    """Weigh every crossing channel by leak / task (module docstring); eval mode throughout."""
    from patrol_compress.models.split import split as split_model

    was = model.training
    model.eval()
    try:
        edge, cloud = split_model(model, split)
        with torch.no_grad():
            z = _batched(edge, images).detach()
        images = _shrink(images.detach().float().cpu())
        z = z.float().cpu()
        probe = _fit_probe(z, images, seed)
        cloud_ids = {id(m) for m in cloud.modules()}
        with torch.no_grad():
            z, images = z[:SCORE_IMAGES], images[:SCORE_IMAGES]
            base_err = float(((_batched(probe, z) - images) ** 2).mean())
            out = torch.cat([_logits(cloud(z[i : i + 256])) for i in range(0, len(z), 256)])
            spread = float(((out - out.mean(0)) ** 2).sum(1).mean()) or 1.0
            means = z.mean(dim=(0, 2, 3))
            weights = [torch.ones(len(g[0].idxs)) for g in groups]
            channels: list[dict[str, float | int]] = []
            raw: list[tuple[int, int, float, float]] = []
            for gi in crossing:
                index = crossing_index(graph, groups[gi], cloud_ids, z.shape[1])
                for root, c in sorted(index.items()):
                    ablated = z.clone()
                    ablated[:, c] = means[c]
                    leak = float(((_batched(probe, ablated) - images) ** 2).mean()) - base_err
                    moved = torch.cat(
                        [_logits(cloud(ablated[i : i + 256])) for i in range(0, len(z), 256)]
                    )
                    task = float(((moved - out) ** 2).sum(1).mean()) / spread
                    raw.append((gi, root, leak, task))
                    channels.append({"group": gi, "channel": c, "leak_mse": leak, "task": task})
    finally:
        model.train(was)
    if raw:
        eps_leak = LEAK_FLOOR * max(sum(max(r[2], 0.0) for r in raw) / len(raw), 1e-12)
        eps_task = TASK_FLOOR * max(sum(max(r[3], 0.0) for r in raw) / len(raw), 1e-12)
        ratio = {
            (gi, root): (max(leak, 0.0) + eps_leak) / (max(task, 0.0) + eps_task)
            for gi, root, leak, task in raw
        }
        geo = math.exp(sum(math.log(v) for v in ratio.values()) / len(ratio))
        for (gi, root), v in ratio.items():
            weights[gi][root] = v / geo
        for rec, (gi, root, _, _) in zip(channels, raw, strict=True):
            rec["weight"] = float(weights[gi][root])
    return LeakageRank(weights, channels, base_err)
