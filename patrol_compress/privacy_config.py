"""Attack and baseline-defense settings (compatibility re-exports).

The recipe's ``attack:`` and ``defenses:`` sections live in
:mod:`patrol_compress.config.privacy`. This module only re-exports them so
that the public import path ``patrol_compress.privacy_config`` keeps working
for users; nothing inside the package imports through it (the library
imports :mod:`patrol_compress.config` directly).
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
