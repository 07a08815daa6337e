"""APP: adversarial privacy-preserving training with a reconstructor and a discriminator.

The paper's baseline [7]: a reconstruction network tries to invert the edge
features, a discriminator tells its reconstructions from real images (pushing
the reconstructor towards realistic images, i.e. a stronger attacker), and the
target is fine-tuned to keep its task loss low while making the
reconstruction error high. Per batch:

1. discriminator: BCE(real images -> 1, reconstructions -> 0);
2. reconstructor: L2 reconstruction error (Eq. 8's measure) plus
   ``GAN_WEIGHT`` x BCE(D(reconstruction) -> 1), on detached features;
3. target (edge and cloud): task loss ``- lambda`` x L2 reconstruction error,
   ``lambda`` being the sweep's strength.

Choices where [7] is not specific to this setting: the reconstructor is the
same edge-mirroring :class:`InversionNet` PATROL's surrogate uses (width
``patrol.adversarial.adversary_width``), so APP and PATROL face the same
adversary; it gets one warm-up epoch on the frozen target before the
adversarial epochs so the target does not fight an untrained attacker; the
reconstruction error is bounded (sigmoid output), so maximising it cannot blow
up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.defenses.base import DEFENSES, Defense, DefenseContext, defended_copy
from patrol_compress.defenses.finetune import finetune
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.inversion import InversionNet, reconstruction_l2
from patrol_compress.models.split import edge_shapes
from patrol_compress.models.split import split as split_model
from patrol_compress.train.target import make_loader

GAN_WEIGHT = 0.01
"""Weight of the discriminator term for the reconstructor: small, so L2 stays the goal."""
ADVERSARY_LR = 1e-3


class Discriminator(nn.Module):
    """Real image or reconstruction? Two strided convs, global pooling, one logit."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x).squeeze(1)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@DEFENSES.register("app")
class APPDefense(Defense):
    name = "app"
    parameter = "lambda"

    def apply(self, model: BlockNet, split: int, strength: float, ctx: DefenseContext) -> BlockNet:
        out = defended_copy(model, split)
        dev = ctx.device
        out.to(dev)
        shape = tuple(ctx.data.train[0][0].shape)
        input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        width = ctx.recipe.patrol.adversarial.adversary_width
        torch.manual_seed(ctx.seed)
        shapes = edge_shapes(out, split, input_shape)
        recon = InversionNet(shapes, max_width=width, refine=0).to(dev)
        disc = Discriminator(input_shape[0]).to(dev)
        opt_r = torch.optim.Adam(recon.parameters(), lr=ADVERSARY_LR)
        opt_d = torch.optim.Adam(disc.parameters(), lr=ADVERSARY_LR)

        def adversary_step(x: torch.Tensor, z: torch.Tensor) -> None:
            recon.train()
            rec = recon(z)
            d_loss = _bce(disc(x), 1.0) + _bce(disc(rec.detach()), 0.0)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            r_loss = reconstruction_l2(x, rec) + GAN_WEIGHT * _bce(disc(rec), 1.0)
            opt_r.zero_grad(set_to_none=True)
            r_loss.backward()
            opt_r.step()

        # Warm-up: the adversaries learn on the frozen target for one epoch.
        edge, _ = split_model(out, split)
        loader = make_loader(ctx.data, ctx.recipe.train, ctx.seed)
        for x, _, _ in loader:
            x = x.to(dev)
            with torch.no_grad():
                z = edge(x)
            adversary_step(x, z)
        ctx.data.train.set_augment(False)

        def privacy_term(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return -strength * reconstruction_l2(x, recon(z))

        finetune(out, split, ctx, ctx.sweep.epochs or 1, privacy_term, adversary_step)
        return out
