"""Distance correlation between the images and what crosses the split (NoPeek's term).

Vepakomma et al. ("NoPeek", 2020) add the sample distance correlation
between a batch's raw inputs and the split's activations to the task loss:
dCor is 0 exactly when the two are independent (for the population), and
it sees every dependence, not only the linear one, so lowering it removes
what an attacker of *any* family could read rather than fooling one
decoder, which is how the adversarial term failed here (README, "Does
PATROL beat plain pruning?"). ``patrol.decorrelation`` puts it beside the
paper's terms; it is computed on the batch, so its value depends on the
batch size (reported, not compared across recipes).

The estimator is the bias-corrected one of Székely and Rizzo (2014, "Partial
distance correlation with methods for dissimilarities"): pairwise Euclidean
distances of the flattened inputs and of the flattened features,
U-centred, and dCor^2 = dCov^2(X, Z) / sqrt(dVar^2(X) dVar^2(Z)). Why not
the plain (V-statistic) estimator NoPeek wrote: its bias grows with the
dimension, and for 64 images of 192 values against 20 independent ones it
read 0.85 (measured in this module's test), so a loss on images of
thousands of values would mostly measure their dimension. The corrected
dCor^2 is near 0 for independent batches (it can dip slightly below) and
1 for a similarity; the loss is dCor^2 itself, which has no square root to
blow up at 0. ``EPS`` keeps the distances' square roots differentiable when
two rows coincide.
"""

from __future__ import annotations

import torch

EPS = 1e-9


def _u_centred_distances(x: torch.Tensor) -> torch.Tensor:
    """The U-centred matrix of pairwise Euclidean distances between the rows of ``x``."""
    flat = x.flatten(1).float()
    n = flat.shape[0]
    gram = flat @ flat.T  # N x N: never the N x N x D differences
    norms = gram.diagonal()
    sq = (norms.unsqueeze(0) + norms.unsqueeze(1) - 2.0 * gram).clamp_min(0.0)
    eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
    d = torch.sqrt(sq + EPS) * (1.0 - eye)
    rows = d.sum(1, keepdim=True) / (n - 2)
    cols = d.sum(0, keepdim=True) / (n - 2)
    total = d.sum() / ((n - 1) * (n - 2))
    return (d - rows - cols + total) * (1.0 - eye)


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bias-corrected squared distance correlation of the batch ``x`` (N x ...) with ``z``.

    Needs N >= 4 (the correction divides by N - 3); the distance matrices are
    N x N, so the cost grows with the batch size squared, not with the image
    size beyond one product.
    """
    if x.shape[0] != z.shape[0] or x.shape[0] < 4:
        raise ValueError(
            f"distance_correlation: needs matching batches of >= 4, got "
            f"{x.shape[0]} and {z.shape[0]}"
        )
    a, b = _u_centred_distances(x), _u_centred_distances(z)
    n = x.shape[0]
    scale = 1.0 / (n * (n - 3))
    dcov = (a * b).sum() * scale
    dvar = ((a * a).sum() * scale) * ((b * b).sum() * scale)
    return dcov / torch.sqrt(dvar.clamp_min(EPS))
