"""The pruner's forward pre-hooks: frozen BatchNorm statistics on the edge, pending caps.

From the pruner's creation until ``close()``, the edge's BatchNorms normalise
with their running statistics whatever ``model.train()`` says (as in the
recipe path: the Lipschitz pass must not mix clean and perturbed images in
batch statistics, and the task loss must see the edge the privacy terms
shape). The hook of a masked BN sits on its :class:`MaskedNorm`, which then
takes its fused eval-mode path, exactly what an eval-mode flag gives.

Every hook is a module-level function or a closure, never a bound method: a
deep copy of the model (the exactness check, exports) must not copy the pruner.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from patrol_compress.models.split import StageBlock
from patrol_compress.pruning.masks import MaskedNorm


def freeze_edge_bn(edge: list[StageBlock]) -> list[RemovableHandle]:
    """A pre-hook on every BatchNorm of the edge (on its MaskedNorm when masked)."""
    handles = []
    inner = {id(m.bn) for b in edge for m in b.modules() if isinstance(m, MaskedNorm)}
    for block in edge:
        for m in block.modules():
            if isinstance(m, MaskedNorm):
                handles.append(m.register_forward_pre_hook(_frozen_masked_norm))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inner:
                handles.append(m.register_forward_pre_hook(_running_stats))
    return handles


def pending_hook(owner: Any, model: nn.Module) -> Callable[[nn.Module, object], None]:
    """A pre-hook for the model: ``owner._apply_pending()`` before it runs (the next step's
    budget caps, so that your ``model(x)`` sees them). Copies are told apart by identity."""
    ref, model_id = weakref.ref(owner), id(model)

    def hook(module: nn.Module, args: object) -> None:
        pruner = ref()
        if pruner is not None and id(module) == model_id:
            pruner._apply_pending()

    return hook


def _running_stats(module: nn.Module, args: object) -> None:
    """This BatchNorm normalises with its running statistics."""
    module.training = False


def _frozen_masked_norm(module: nn.Module, args: object) -> None:
    """The masked BN normalises with its running statistics (the fused path)."""
    assert isinstance(module, MaskedNorm)
    module.bn.training = False
