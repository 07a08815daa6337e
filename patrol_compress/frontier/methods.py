"""The methods a frontier compares: named changes to a recipe's ``patrol:`` section.

A method is what differs between two ways of making a split-4 edge from the
same target and budget. They live in a registry (:data:`METHODS`) that refuses
duplicate names and answers a typo with the known names, so a user's own
method is one :func:`register_method` call away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from patrol_compress.registry import Registry


@dataclass(frozen=True)
class Method:
    """``patrol`` is deep-merged into the recipe's ``patrol:`` section for every point."""

    name: str
    description: str
    patrol: dict[str, Any] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("frontier method")
BASELINE = "pruning-only"
"""The method every other is compared with: plain budget-steered pruning."""


def without_terms(**patrol: Any) -> dict[str, Any]:
    """A ``patrol`` change with PATROL's Lipschitz and adversarial terms off, plus ``patrol``.

    Every method built on plain pruning starts here; a fresh dict each call, so
    no two methods share a nested one.
    """
    return {"lipschitz": {"enabled": False}, "adversarial": {"enabled": False}, **patrol}


def register_method(method: Method) -> Method:
    METHODS.add(method.name, method)
    return method


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if both else v
    return out


register_method(
    Method(
        BASELINE,
        "plain budget-steered pruning: masks, steering and removal, no privacy terms",
        without_terms(),
    )
)
register_method(
    Method(
        "patrol",
        "the paper's method: Lipschitz and adversarial terms on, at the recipe's weights",
        {"lipschitz": {"enabled": True}, "adversarial": {"enabled": True}},
    )
)
register_method(
    Method(
        "pruning+lipschitz",
        "the paper's Lipschitz term alone (Table II's second row's counterpart)",
        {"lipschitz": {"enabled": True}, "adversarial": {"enabled": False}},
    )
)
register_method(
    Method(
        "pruning+adversarial",
        "the paper's adversarial term alone, against its mirror surrogate",
        {"lipschitz": {"enabled": False}, "adversarial": {"enabled": True}},
    )
)
register_method(
    Method(
        "adversarial-suite",
        "the adversary plays the attack suite's own decoder families, refit every epoch after "
        "a warm-up, without the Lipschitz term",
        {
            "lipschitz": {"enabled": False},
            "adversarial": {
                "enabled": True,
                "surrogate": "suite",
                "adversary_every": 1,
                "adversary_epochs": 1,
                "warmup_epochs": 8,
            },
        },
    )
)
register_method(
    Method(
        "uplink",
        "plain pruning with a quantized uplink (usually swept by uplink.bits): what crosses the "
        "split is b-bit codes with learned per-channel ranges",
        without_terms(uplink={"bits": 8}),
    )
)
register_method(
    Method(
        "uplink-recalibrated",
        "a quantized uplink (usually swept by uplink.bits) whose range is set afresh from the "
        "pruned edge's features before recovery (uplink.recalibrate)",
        without_terms(uplink={"bits": 2, "recalibrate": True}),
    )
)
register_method(
    Method(
        "uplink-narrow",
        "a 2-bit uplink whose crossing channels the budget prunes (usually swept by "
        "budget.uplink_bits): fewer channels and fewer bits cross the split",
        without_terms(uplink={"bits": 2}),
    )
)
register_method(
    Method(
        "uplink4-narrow",
        "a 4-bit uplink whose crossing channels the budget prunes (usually swept by "
        "budget.uplink_bits): the 2-bit uplink's bits spent on fewer channels at finer codes, "
        "for a task (re-identification) where 2-bit codes cost accuracy",
        without_terms(uplink={"bits": 4}),
    )
)
register_method(
    Method(
        "uplink-noisy",
        "a 2-bit uplink with Gaussian noise before the rounding (usually swept by "
        "uplink.noise, in quantization steps): the noise lowers what each value can carry "
        "below its bits",
        without_terms(uplink={"bits": 2, "noise": 1.0}),
    )
)
register_method(
    Method(
        "uplink-noisy-narrow",
        "a 2-bit uplink with noise of 0.5 steps before the rounding whose crossing channels the "
        "budget prunes (usually swept by budget.uplink_bits): the tight bound of the narrow "
        "uplink and the noise's lower capacity per value together",
        without_terms(uplink={"bits": 2, "noise": 0.5}),
    )
)
register_method(
    Method(
        "patrol-fit",
        "the paper's method against an attacker that learns: refitted every epoch for 3 passes "
        "after a 4-pass warm-up (on Fashion-MNIST 32 px it stayed above the label-only floor "
        "at its fit in 14 of 16 epochs; the recipe's schedule in 8)",
        {
            "lipschitz": {"enabled": True},
            "adversarial": {
                "enabled": True,
                "adversary_every": 1,
                "adversary_epochs": 3,
                "warmup_epochs": 4,
            },
        },
    )
)
