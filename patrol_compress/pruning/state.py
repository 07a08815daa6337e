"""A :class:`~patrol_compress.PatrolPruner`'s state as one flat dict of tensors, and back.

Flat and tensors only, so a checkpoint stores it in safetensors next to the
weights (:func:`~patrol_compress.train.loop.run_stage`'s ``stateful``) and a
resumed run continues bit for bit: the masks, FISTA's iterate, momentum and
caps (per mask, by its position among the masks), the steering's plan, the
surrogate's weights, its Adam and its last fit's PSNR, and the step and epoch counters. Settings
(learning rates, lambdas) are not state: the pruner is rebuilt from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patrol_compress.errors import UsageError
from patrol_compress.pruning.inputs import device_of
from patrol_compress.pruning.masks import mask_parameters

if TYPE_CHECKING:
    from patrol_compress.pruning.pruner import PatrolPruner


def pruner_state(pruner: PatrolPruner) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {
        "steps": torch.tensor([pruner.steps]),
        "epoch": torch.tensor([pruner.epoch]),
        "explicit": torch.tensor([int(pruner._explicit)]),
        "finished": torch.tensor([int(pruner._finished)]),
    }
    for i, p in enumerate(mask_parameters(pruner.net)):
        out[f"masks.{i}"] = p.detach().cpu().clone()
    steering = pruner.steering
    if steering is not None and steering.fista is not None:
        fista = steering.fista
        for i, p in enumerate(fista.param_groups[0]["params"]):
            for key, value in fista.state[p].items():
                out[f"fista.{i}.{key}"] = value.detach().cpu().clone()
        out.update({f"steering.{k}": v for k, v in steering.state_dict().items()})
    adversary = pruner.adversary
    if adversary.surrogate is not None:
        for key, value in adversary.surrogate.state_dict().items():
            out[f"surrogate.{key}"] = value.detach().cpu().clone()
        if adversary.opt is not None:
            for pid, st in adversary.opt.state_dict()["state"].items():
                for key, value in st.items():
                    out[f"surrogate_opt.{pid}.{key}"] = torch.as_tensor(value).detach().cpu()
    if adversary.fit_psnr is not None:
        out["adversary_fit_psnr"] = torch.tensor([adversary.fit_psnr], dtype=torch.float64)
    return out


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@torch.no_grad()
def load_pruner_state(pruner: PatrolPruner, state: dict[str, torch.Tensor]) -> None:
    pruner.steps = int(state["steps"][0])
    pruner.epoch = int(state["epoch"][0])
    pruner._explicit = bool(int(state["explicit"][0]))
    pruner._finished = bool(int(state["finished"][0]))
    masks = mask_parameters(pruner.net)
    saved = _part(state, "masks.")
    if len(saved) != len(masks):
        raise UsageError(
            f"load_state_dict: the state holds {len(saved)} masks, this pruner has {len(masks)}"
        )
    for i, p in enumerate(masks):
        p.copy_(saved[str(i)])
    steering = pruner.steering
    if steering is not None and steering.fista is not None:
        fista = steering.fista
        params = fista.param_groups[0]["params"]
        fista.state.clear()
        for key, value in _part(state, "fista.").items():
            index, _, name = key.partition(".")
            param = params[int(index)]
            fista.state[param][name] = value.to(param.device)
        steering.load_state_dict(_part(state, "steering."))
    weights = _part(state, "surrogate.")
    if weights:
        surrogate = pruner.adversary.ensure(None, device_of(pruner.model))
        surrogate.load_state_dict(weights)
        opt_state = _part(state, "surrogate_opt.")
        if opt_state:
            opt = pruner.adversary.optimizer()
            per: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in opt_state.items():
                index, _, name = key.partition(".")
                per.setdefault(int(index), {})[name] = value
            groups = opt.state_dict()["param_groups"]
            opt.load_state_dict({"state": per, "param_groups": groups})
    # An epoch that does not refit logs the last fit's PSNR; older checkpoints lack it.
    fit = state.get("adversary_fit_psnr")
    pruner.adversary.fit_psnr = None if fit is None else float(fit[0])
    # Mid-epoch (a loop of your own): the next step's caps; the recipe's epochs begin anew.
    active = pruner.steering is not None and not pruner._finished
    pruner._pending = "caps" if active else None
