"""Recipes: validated YAML that describes a whole run (compatibility re-exports).

The schema lives in :mod:`patrol_compress.config.recipe` (on the strict base
and YAML reader of :mod:`patrol_compress.config.base`). This module only
re-exports it so that the public import path ``patrol_compress.recipe``, which
the README and users' code use, keeps working; nothing inside the package
imports through it (the library imports :mod:`patrol_compress.config`
directly, so the shim can never close an import cycle).
"""

from __future__ import annotations

from patrol_compress.config.base import problems as recipe_problems
from patrol_compress.config.privacy import AttackConfig, DefensesConfig
from patrol_compress.config.recipe import (
    SCHEMA_VERSION,
    SEED_MAX,
    AdversarialConfig,
    BlocksConfig,
    BudgetConfig,
    DataConfig,
    DistillConfig,
    DistillSettings,
    ExportConfig,
    LipschitzConfig,
    ModelConfig,
    PatrolConfig,
    PatrolSettings,
    Recipe,
    TrainConfig,
    dump_recipe,
    load_recipe,
    parse_recipe,
    with_privacy_terms,
)

__all__ = [
    "with_privacy_terms",
    "SCHEMA_VERSION",
    "SEED_MAX",
    "AdversarialConfig",
    "AttackConfig",
    "BlocksConfig",
    "BudgetConfig",
    "DataConfig",
    "DefensesConfig",
    "DistillConfig",
    "DistillSettings",
    "ExportConfig",
    "LipschitzConfig",
    "ModelConfig",
    "PatrolConfig",
    "PatrolSettings",
    "Recipe",
    "TrainConfig",
    "dump_recipe",
    "load_recipe",
    "parse_recipe",
    "recipe_problems",
]
