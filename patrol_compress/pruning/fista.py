"""FISTA for the soft masks (Eq. 1; Beck & Teboulle's accelerated proximal gradient).

The smooth part is the prediction loss plus ``lambda2 * ||m||_2`` (whose gradient
``lambda2 * m / ||m||_2`` is taken over all masks together, as Eq. 1 writes one
norm of the whole mask vector); the ``lambda1 * ||m||_1`` part is handled by its
proximal operator, soft-thresholding, which is what produces *exact* zeros.

The parameter the network uses holds the extrapolated point ``y`` (where FISTA
evaluates gradients); the sparse iterate ``x`` lives in the optimizer state and
:meth:`FISTA.finalize` writes it back before masks are read for pruning.

All of FISTA's state (``x``, ``t``, the steering caps) is tensors in
``self.state``, so the optimizer's state dict checkpoints and resumes it
exactly. A step is a deterministic function of the masks, that state and the
gradient: in a distributed run the mask gradients are averaged over ranks
before :meth:`FISTA.step`, which keeps masks and state identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


class FISTA(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        lambda1: float,
        lambda2: float,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "lambda1": lambda1, "lambda2": lambda2, "l1_scale": 1.0}
        )

    @torch.no_grad()
    def step(  # type: ignore[override]  # one signature for torch's two overloads
        self, closure: Callable[[], float] | None = None
    ) -> float | None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            norm = math.sqrt(sum(float(p.pow(2).sum()) for p in params))
            lr, l1 = group["lr"], group["lambda1"] * group["l1_scale"]
            for p in params:
                st = self.state[p]
                if "x" not in st:
                    st["x"] = p.detach().clone()
                    st["t"] = torch.ones(())
                grad = p.grad
                if group["lambda2"] > 0 and norm > 0:
                    grad = grad + group["lambda2"] * p / norm
                x_new = soft_threshold(p - lr * grad, lr * l1)
                if "cap" in st:
                    x_new = torch.sign(x_new) * torch.minimum(x_new.abs(), st["cap"])
                t = float(st["t"])
                t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                y_new = x_new + ((t - 1.0) / t_new) * (x_new - st["x"])
                if "cap" in st:
                    y_new = torch.sign(y_new) * torch.minimum(y_new.abs(), st["cap"])
                st["x"] = x_new
                st["t"] = torch.tensor(t_new)
                p.copy_(y_new)
        return None

    @torch.no_grad()
    def set_caps(self, caps: dict[torch.nn.Parameter, torch.Tensor]) -> None:
        """Per-element upper bounds on |mask| (budget steering); ``inf`` leaves one free."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if p in caps:
                    st["cap"] = caps[p].to(p.device)
                    if "x" in st:
                        st["x"] = torch.sign(st["x"]) * torch.minimum(st["x"].abs(), st["cap"])
                    p.copy_(torch.sign(p) * torch.minimum(p.abs(), st["cap"]))
                else:
                    st.pop("cap", None)

    @torch.no_grad()
    def finalize(self) -> None:
        """Write the sparse iterate x back into the parameters (and restart momentum)."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if "x" in st:
                    p.copy_(st["x"])
                    st["t"] = torch.ones(())
