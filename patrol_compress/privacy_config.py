"""Attack and baseline-defense settings: the recipe's ``attack:`` and ``defenses:`` sections.

The schema lives in :mod:`patrol_compress.config.privacy`; this module keeps
the public import path ``patrol_compress.privacy_config`` working.
"""

from __future__ import annotations

from patrol_compress.config.privacy import (
    DEFAULT_STRENGTHS,
    AdaptiveConfig,
    AttackConfig,
    AttackName,
    BlackboxConfig,
    DecoderFamily,
    DefenseName,
    DefensesConfig,
    DefenseSweep,
    RecogniserConfig,
    RegionConfig,
    WhiteboxConfig,
    WhiteboxInit,
    load_attack_config,
)

__all__ = [
    "DEFAULT_STRENGTHS",
    "AdaptiveConfig",
    "AttackConfig",
    "AttackName",
    "BlackboxConfig",
    "DecoderFamily",
    "DefenseName",
    "DefenseSweep",
    "DefensesConfig",
    "RecogniserConfig",
    "RegionConfig",
    "WhiteboxConfig",
    "WhiteboxInit",
    "load_attack_config",
]
