"""Reconstruction metrics for inversion attacks: PSNR, SSIM, MSE, L2, regions, attack accuracy.

Every score is computed PER IMAGE and then averaged over the images (the
paper's "average L2 distance", and what most MIA papers mean by mean PSNR).
That is not the same number as PSNR of the pooled MSE: averaging per-image
PSNRs weighs a badly reconstructed image by its log error, so one blurry image
cannot hide behind many sharp ones.

Images are float tensors ``N x C x H x W`` in [0, 1] (the data contract, see
:mod:`patrol_compress.data.base`), so PSNR and SSIM use ``data_range=1.0``.
PSNR and SSIM come from torchmetrics (SSIM: Gaussian window 11x11, sigma 1.5,
k1 0.01, k2 0.03, the defaults of Wang et al.).

PSNR of a perfect reconstruction is +inf, which would make any mean inf; each
image's PSNR is therefore capped at :data:`PSNR_CAP_DB` (an MSE of 1e-10).
The cap is far above anything 8-bit images can show (uint8 rounding noise
alone gives ~59 dB), so no real reconstruction is affected.

Attack accuracy follows the paper's idea (a recogniser applied to
reconstructions) with an identity recogniser in place of an ImageNet model,
since the generated vehicles carry identities, not ImageNet classes: a small
CNN trained on clean images of the identities (or classes) being evaluated;
the attack accuracy is the share of reconstructions it assigns to their true
identity. Its accuracy on the clean images is reported beside it as the
ceiling.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from patrol_compress.errors import PatrolError

DATA_RANGE = 1.0
PSNR_CAP_DB = 100.0
"""Per-image PSNR ceiling (dB): an MSE of 1e-10 with data range 1."""
METHOD_NOTE = (
    "PSNR and SSIM per image (torchmetrics, data_range=1.0, SSIM Gaussian 11x11 sigma 1.5), "
    f"then averaged over images; per-image PSNR capped at {PSNR_CAP_DB:g} dB; "
    "MSE and L2 (Frobenius norm of the difference) per image, averaged"
)

Box = tuple[float, float, float, float]


class ImageMetricError(PatrolError):
    """Images given to a metric do not have matching N x C x H x W shapes."""


def _check(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape != x_hat.shape:
        raise ImageMetricError(
            f"expected two N x C x H x W batches of the same shape, "
            f"found {list(x.shape)} and {list(x_hat.shape)}"
        )


def mse_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    _check(x, x_hat)
    return (x.float() - x_hat.float()).pow(2).flatten(1).mean(1)


def l2_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of the error; its mean is Eq. 8's ``reconstruction_l2``."""
    _check(x, x_hat)
    return (x.float() - x_hat.float()).flatten(1).norm(dim=1)


def psnr_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, data range 1) of each image, capped at :data:`PSNR_CAP_DB`."""
    _check(x, x_hat)
    vals = peak_signal_noise_ratio(
        x_hat.float(), x.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    )
    return torch.clamp(vals, max=PSNR_CAP_DB)


def ssim_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """SSIM (data range 1) of each image."""
    _check(x, x_hat)
    vals = structural_similarity_index_measure(
        x_hat.float(), x.float(), data_range=DATA_RANGE, reduction="none"
    )
    if not isinstance(vals, torch.Tensor):  # only a tuple when asked for the full map
        raise TypeError("torchmetrics returned a tuple for a plain SSIM")
    return vals


def image_metrics(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Mean over images of per-image PSNR, SSIM, MSE and L2 (see module docstring)."""
    return {
        "psnr": float(psnr_per_image(x, x_hat).mean()),
        "ssim": float(ssim_per_image(x, x_hat).mean()),
        "mse": float(mse_per_image(x, x_hat).mean()),
        "l2": float(l2_per_image(x, x_hat).mean()),
    }


def box_pixels(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """A box given as fractions (x0, y0, x1, y1) in pixel rows/cols, at least one pixel."""
    x0, y0, x1, y1 = box
    c0, r0 = int(x0 * width), int(y0 * height)
    c1, r1 = max(c0 + 1, round(x1 * width)), max(r0 + 1, round(y1 * height))
    return r0, min(r1, height), c0, min(c1, width)


def region_metrics(
    x: torch.Tensor, x_hat: torch.Tensor, box: Box | torch.Tensor
) -> dict[str, float]:
    """PSNR and SSIM of a region, per image then averaged.

    ``box`` is one fixed box for every image, or an N x 4 tensor of per-image
    boxes (fractions x0, y0, x1, y1); images whose box is empty (the region is
    not in the picture) are left out, and ``images`` says how many counted.
    PSNR comes from the MSE over the region's pixels. SSIM is the mean of the
    full-image SSIM map over the region: cropping first would leave regions
    smaller than the 11x11 window (a plate is ~12 x 6 px at 32 px) without a
    valid SSIM, and the map keeps each pixel's window context.
    """
    _check(x, x_hat)
    n, _, h, w = x.shape
    if isinstance(box, torch.Tensor):
        if box.shape != (n, 4):
            raise ImageMetricError(f"per-image boxes must be {n} x 4, found {list(box.shape)}")
        boxes: list[Box | None] = [
            None if (b[2] <= b[0] or b[3] <= b[1]) else (b[0], b[1], b[2], b[3])
            for b in box.tolist()
        ]
    else:
        boxes = [box] * n
    out = structural_similarity_index_measure(
        x_hat.float(),
        x.float(),
        data_range=DATA_RANGE,
        reduction="none",
        return_full_image=True,
    )
    if not isinstance(out, tuple):
        raise TypeError("torchmetrics returned no SSIM map")
    ssim_map = out[1]
    psnrs, ssims = [], []
    for i, b in enumerate(boxes):
        if b is None:
            continue
        r0, r1, c0, c1 = box_pixels(b, h, w)
        diff = x[i, :, r0:r1, c0:c1].float() - x_hat[i, :, r0:r1, c0:c1].float()
        mse = diff.pow(2).mean().clamp_min(1e-10)
        psnrs.append(torch.clamp(10 * torch.log10(DATA_RANGE**2 / mse), max=PSNR_CAP_DB))
        ssims.append(ssim_map[i, :, r0:r1, c0:c1].mean())
    if not psnrs:
        return {"psnr": float("nan"), "ssim": float("nan"), "images": 0}
    return {
        "psnr": float(torch.stack(psnrs).mean()),
        "ssim": float(torch.stack(ssims).mean()),
        "images": len(psnrs),
    }


def mean_image_metrics(mean_image: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Scores of the trivial attacker that predicts ``mean_image`` (C x H x W) for every image."""
    guess = mean_image.to(x.dtype).expand_as(x)
    return image_metrics(x, guess)


# ----------------------------------------------------------------------- attack accuracy


class Recogniser(nn.Module):
    """A small CNN (four conv stages, global pooling, linear) that names identities.

    Deliberately independent of the target network: a recogniser that shared
    the target's weights would reward reconstructions that fool the target
    rather than ones that look like the vehicle.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for i in range(4):
            w = width * 2 ** min(i, 2)
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.features(x)))


def train_recogniser(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    device: torch.device,
    *,
    steps: int = 100,
    width: int = 16,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> Recogniser:
    """Fit a :class:`Recogniser` on clean images with flips and small shifts.

    The budget is in optimiser steps, not epochs: re-id evaluation sets hold a
    few images per identity (3 steps per epoch on the quickstart) while
    classification sets hold thousands, and what the recogniser needs is a
    number of updates. On the quickstart (30 identities, 6 references each)
    100 steps reach 81-88% on clean probes in ~1 min on one CPU thread (15
    epochs of 3 steps: 15%; chance: 3%).
    Augmentation matters more than depth: there are only a few clean images
    per identity, and reconstructions are slightly misaligned and blurry.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ImageMetricError(
            f"recogniser needs matching, non-empty images and labels; "
            f"found {len(images)} images and {len(labels)} labels"
        )
    gen = torch.Generator().manual_seed(seed)
    net = Recogniser(images.shape[1], num_classes, width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    done = 0
    while done < steps:
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch_size):
            if done == steps:
                break
            idx = order[start : start + batch_size]
            x = _augment(images[idx], gen).to(device)
            loss = nn.functional.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
    return net.eval()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, x.shape[-1] // 16)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


@torch.no_grad()
def attack_accuracy(
    recogniser: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128
) -> float:
    """Share of ``images`` (reconstructions or clean) the recogniser assigns to ``labels``."""
    if len(images) != len(labels):
        raise ImageMetricError(f"found {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        return float("nan")
    dev = next(recogniser.parameters()).device
    hits = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(dev)
        pred = recogniser(x).argmax(1).cpu()
        hits += int((pred == labels[start : start + batch_size]).sum())
    return hits / len(images)
