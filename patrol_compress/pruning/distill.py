"""Knowledge distillation from the unpruned teacher: the loss behind ``patrol.recovery_distill``.

:class:`Distiller` holds a frozen teacher (eval mode, no gradients) and
computes, for a batch and the student's output on it, the weighted sum of
the terms :class:`~patrol_compress.config.recipe.DistillSettings` describes:
Hinton's KL divergence on T-softened logits (times T^2), the attention-map
distance at the crossing (the edge output at the split) and the embedding
distance (the pooled feature the head takes). The student's crossing and
head input are caught by forward hooks on its modules while its own forward
runs, so :meth:`Distiller.loss` costs one teacher forward and no second
student pass. :meth:`~patrol_compress.PatrolPruner.distill_loss` is the door
for a user's loop; the recipe's stages go through the same object.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.config.recipe import DistillSettings
from patrol_compress.errors import ModelError, UsageError
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.head import ReidHead
from patrol_compress.models.split import last_edge_child


def kd_logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s term: KL(teacher || student) of the T-softened scores, times T^2.

    Averaged over the batch; exactly 0 when the two are equal.
    """
    t = temperature
    s_log = F.log_softmax(student.float() / t, dim=1)
    t_log = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(s_log, t_log, reduction="batchmean", log_target=True) * (t * t)


def attention_map(z: torch.Tensor) -> torch.Tensor:
    """Zagoruyko and Komodakis' spatial attention: channel mean of z^2, flattened, L2-normalised.

    One number per position, whatever the channel count (a pruned edge has fewer).
    """
    a = z.float().pow(2).mean(dim=1) if z.dim() > 2 else z.float().pow(2)
    return F.normalize(a.flatten(1), dim=1)


def crossing_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance of the two attention maps, summed over positions, batch mean."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ModelError(
            f"distillation at the crossing: the student's edge output {list(student.shape)} "
            f"and the teacher's {list(teacher.shape)} differ in batch or spatial size"
        )
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(1).mean()


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine per image when the widths agree; else the batch similarity matrices' MSE."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    if s.shape[1] == t.shape[1]:
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return (s @ s.T - t @ t.T).pow(2).mean()


def pooled(h: torch.Tensor) -> torch.Tensor:
    """The head's input as one vector per image (global average over positions)."""
    return h.float().mean(dim=(2, 3)) if h.dim() == 4 else h.float().flatten(1)


def _head(net: BlockNet) -> nn.Module | None:
    """The first module of the net's head block (None: no head)."""
    return net.block_modules("head")[0] if net.has_head else None


def _reid_logits(head: ReidHead, h: torch.Tensor) -> torch.Tensor:
    """The identity scores a ReidHead computes in training mode, from its input ``h``."""
    return head.classifier(head.neck(torch.flatten(head.pool(h), 1)))


class _Catch:
    """Forward hooks keeping the last output of the crossing and the last input of the head."""

    def __init__(self) -> None:
        self.crossing: torch.Tensor | None = None
        self.head_in: torch.Tensor | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, net: BlockNet, split: int, crossing: bool) -> None:
        self.detach()
        if crossing:
            module = getattr(net, last_edge_child(net, split))
            self.handles.append(module.register_forward_hook(self._crossing))
        head = _head(net)
        if head is not None:
            self.handles.append(head.register_forward_pre_hook(self._head))

    def _crossing(self, module: nn.Module, args: Any, out: Any) -> None:
        self.crossing = out if isinstance(out, torch.Tensor) else None

    def _head(self, module: nn.Module, args: Any) -> None:
        first = args[0] if args else None
        self.head_in = first if isinstance(first, torch.Tensor) else None

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.crossing = self.head_in = None


class Distiller:
    """A frozen teacher and the distillation loss of a student's batch.

    Args:
        teacher: the unpruned network; frozen here: eval mode, ``requires_grad``
            off, called under ``torch.no_grad``. Any module for the logit term;
            the feature terms need a :class:`BlockNet` (a recipe's model, or
            ``build_model``'s) split at the same stage.
        settings: the loss's weights, temperature and places.
        split: the stage the edge ends with (the crossing's place, in both nets).
        student: the student's block view; its crossing and head input are
            caught by hooks during its own forward (:meth:`attach` again after
            its modules change).
        own_forward: the student's model is not its block view (a traced
            model): its forward does not run the view's modules, so only the
            logit term is possible.
    """

    def __init__(
        self,
        teacher: nn.Module,
        settings: DistillSettings,
        split: int,
        student: BlockNet,
        own_forward: bool = False,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = settings
        self.split = split
        want = settings.feature_weight > 0
        self.at_crossing = want and "crossing" in settings.feature_at
        self.at_embedding = want and "embedding" in settings.feature_at
        if want and (own_forward or not isinstance(teacher, BlockNet)):
            whose = f"the teacher is a {type(teacher).__name__}"
            if own_forward:
                whose = "the model runs its own forward (traced)"
            raise UsageError(
                f"distillation at {', '.join(settings.feature_at)}: the feature terms need "
                f"BlockNet models (a recipe's, or build_model's), and {whose}; set "
                "feature_weight 0 for the logit term alone"
            )
        if self.at_embedding and not (
            isinstance(teacher, BlockNet) and teacher.has_head and student.has_head
        ):
            raise UsageError(
                "distillation at the embedding needs a head block in the student and the "
                "teacher (the feature the head takes)"
            )
        self._student = _Catch()
        self._teacher = _Catch()
        if isinstance(teacher, BlockNet):
            self._teacher.attach(teacher, split, self.at_crossing)
        self.attach(student)
        self.last_terms: dict[str, float] = {}

    def attach(self, student: BlockNet) -> None:
        """(Re)install the hooks on ``student``'s crossing and head."""
        self.student = student
        self._student.attach(student, self.split, self.at_crossing)

    def close(self) -> None:
        """Remove every hook (student and teacher)."""
        self._student.detach()
        self._teacher.detach()

    def to(self, device: torch.device | str) -> None:
        self.teacher.to(device)

    @torch.no_grad()
    def _teacher_pass(self, x: torch.Tensor) -> tuple[torch.Tensor | None, Any]:
        self.teacher.eval()
        out = self.teacher(x)
        head = _head(self.teacher) if isinstance(self.teacher, BlockNet) else None
        if isinstance(head, ReidHead) and self._teacher.head_in is not None:
            return _reid_logits(head, self._teacher.head_in), out
        return _as_logits(out), out

    def _student_logits(self, output: Any) -> torch.Tensor | None:
        head = _head(self.student)
        plain = isinstance(output, torch.Tensor)
        if plain and isinstance(head, ReidHead) and head.task == "reid" and not head.training:
            # Eval mode: the head returned the embedding; its identity scores come from
            # its input (no BN statistics change in eval mode).
            h = self._student.head_in
            return None if h is None else _reid_logits(head, h)
        return _as_logits(output)

    def loss(self, x: torch.Tensor, output: Any) -> torch.Tensor:
        """The weighted distillation loss of ``x``, whose student output is ``output``.

        Call it right after the student's forward on ``x`` (the hooks keep
        that forward's crossing and head input); the terms' values go to
        :attr:`last_terms` (``kd``, ``kd_crossing``, ``kd_embedding``).
        """
        cfg = self.cfg
        n = len(x)
        t_logits, _ = self._teacher_pass(x)
        total = x.new_zeros((), dtype=torch.float32)
        terms: dict[str, float] = {}
        if cfg.logit_weight > 0:
            s_logits = self._student_logits(output)
            if s_logits is None or t_logits is None:
                raise UsageError(
                    "distill_loss: the student's or the teacher's class scores are not in its "
                    "output; pass the output of the model's forward on x"
                )
            if s_logits.shape != t_logits.shape:
                raise ModelError(
                    f"distillation: the student's scores {list(s_logits.shape)} and the "
                    f"teacher's {list(t_logits.shape)} differ (another number of classes?)"
                )
            kd = kd_logit_loss(s_logits, t_logits, cfg.temperature)
            total = total + cfg.logit_weight * kd
            terms["kd"] = float(kd.detach())
        if self.at_crossing:
            zs = _caught(self._student.crossing, n, "crossing")
            zt = _caught(self._teacher.crossing, n, "crossing")
            term = crossing_loss(zs, zt)
            total = total + cfg.feature_weight * term
            terms["kd_crossing"] = float(term.detach())
        if self.at_embedding:
            es = pooled(_caught(self._student.head_in, n, "embedding"))
            et = pooled(_caught(self._teacher.head_in, n, "embedding"))
            term = embedding_loss(es, et)
            total = total + cfg.feature_weight * term
            terms["kd_embedding"] = float(term.detach())
        self.last_terms = terms
        return total


def _as_logits(out: Any) -> torch.Tensor | None:
    """The class scores in a forward's output: the tensor, or the first of (logits, feature)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _caught(t: torch.Tensor | None, n: int, where: str) -> torch.Tensor:
    """The first ``n`` rows of a hooked tensor (a Lipschitz pass appends perturbed copies)."""
    if t is None or t.shape[0] < n:
        raise UsageError(
            f"distill_loss: no {where} of this batch was seen; call it right after the "
            "model's forward on the same x"
        )
    return t[:n]


__all__ = [
    "Distiller",
    "attention_map",
    "crossing_loss",
    "embedding_loss",
    "kd_logit_loss",
    "pooled",
]
