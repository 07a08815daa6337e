"""Perturbation baselines (Section IV-A of the paper): noise, dropout, skip.

All three stay random at inference: they are what the deployed edge does to
every image it sends, so accuracy is measured and the attacker trains through
the same randomness (a fixed perturbation would simply be learned away).

* ``noise`` (He et al.): ``z + sigma * rms(z) * N(0, 1)`` on the edge output.
  Sigma is relative to each image's feature RMS so one sweep means the same
  thing at every split and for pruned or unpruned edges, whose feature scales
  differ by orders of magnitude.
* ``dropout`` (He et al.): each edge-output element is zeroed with
  probability p, survivors scaled by 1/(1-p) (inverted dropout keeps the
  cloud's input scale, so the trained cloud still applies).
* ``skip`` (Oh et al., "randomly skip connections between convolution
  layers"): every edge convolution drops each (output, input) channel
  connection with probability p per forward pass, survivors scaled by
  1/(1-p); a DropConnect at the granularity of whole kernels. The paper does
  not say which connections; kernels between channels are the connections
  between convolution layers, and per-pass resampling makes it a
  perturbation rather than an unrecoverable pruning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.defenses.base import DEFENSES, Defense, DefenseContext, defended_copy
from patrol_compress.defenses.finetune import finetune
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.split import edge_modules, last_edge_child


class GaussianNoise(nn.Module):
    """Adds noise of ``sigma`` times each sample's RMS; active in train and eval mode."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.sigma == 0.0:
            return z
        dims = tuple(range(1, z.dim()))
        rms = z.detach().pow(2).mean(dim=dims, keepdim=True).sqrt()
        return z + self.sigma * rms * torch.randn_like(z)


class FeatureDropout(nn.Module):
    """Inverted dropout that is also active in eval mode (the deployed perturbation)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.dropout(z, self.p, training=True) if self.p > 0 else z


class SkipConnections(nn.Module):
    """A conv whose (out, in) kernels are dropped with probability ``p`` per forward pass."""

    def __init__(self, conv: nn.Conv2d, p: float) -> None:
        super().__init__()
        self.conv = conv
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c = self.conv
        w = c.weight
        if self.p > 0:
            keep = torch.rand(w.shape[0], w.shape[1], 1, 1, device=w.device) >= self.p
            w = w * keep.to(w.dtype) / (1.0 - self.p)
        if c.padding_mode != "zeros":
            raise NotImplementedError("skip defense supports zero-padded convolutions only")
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


def append_to_edge(model: BlockNet, split: int, module: nn.Module) -> None:
    """Run ``module`` on the edge output: the last edge child becomes ``Sequential(child, module)``.

    The block layout (and so every split) is unchanged.
    """
    name = last_edge_child(model, split)
    setattr(model, name, nn.Sequential(getattr(model, name), module))


def wrap_edge_convs(model: BlockNet, split: int, p: float) -> int:
    """Replace every Conv2d of the edge partition by :class:`SkipConnections`; returns how many."""
    count = 0
    for top in edge_modules(model, split):
        targets = [(n, m) for n, m in top.named_modules() if isinstance(m, nn.Conv2d)]
        for name, conv in targets:
            if not name:  # the top-level child itself is a conv
                parent_name = next(k for k, v in model.named_children() if v is top)
                setattr(model, parent_name, SkipConnections(conv, p))
            else:
                parent = top.get_submodule(name.rpartition(".")[0]) if "." in name else top
                setattr(parent, name.rpartition(".")[2], SkipConnections(conv, p))
            count += 1
    return count


class _Perturbation(Defense):
    def perturb(self, model: BlockNet, split: int, strength: float) -> None:
        raise NotImplementedError

    def apply(self, model: BlockNet, split: int, strength: float, ctx: DefenseContext) -> BlockNet:
        out = defended_copy(model, split)
        self.perturb(out, split, strength)
        finetune(out, split, ctx, ctx.sweep.epochs or 0)
        return out


@DEFENSES.register("noise")
class NoiseDefense(_Perturbation):
    name = "noise"
    parameter = "sigma"

    def perturb(self, model: BlockNet, split: int, strength: float) -> None:
        append_to_edge(model, split, GaussianNoise(strength))


@DEFENSES.register("dropout")
class DropoutDefense(_Perturbation):
    name = "dropout"
    parameter = "p"

    def perturb(self, model: BlockNet, split: int, strength: float) -> None:
        append_to_edge(model, split, FeatureDropout(strength))


@DEFENSES.register("skip")
class SkipDefense(_Perturbation):
    name = "skip"
    parameter = "p"

    def perturb(self, model: BlockNet, split: int, strength: float) -> None:
        wrap_edge_convs(model, split, strength)
