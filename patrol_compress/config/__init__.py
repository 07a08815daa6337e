"""Configuration: the recipe and its attack/defense sections, torch-free.

:mod:`.base` holds what every config file shares (the strict pydantic base,
the bounded YAML reader, one-line validation errors); :mod:`.recipe` the
recipe schema and :func:`load_recipe`; :mod:`.privacy` the ``attack:`` and
``defenses:`` sections and :func:`load_attack_config`. The older paths
``patrol_compress.recipe`` and ``patrol_compress.privacy_config`` re-export them.
"""

from __future__ import annotations

from patrol_compress.config.base import StrictModel, problems, read_yaml, validate
from patrol_compress.config.privacy import AttackConfig, DefensesConfig, load_attack_config
from patrol_compress.config.recipe import Recipe, dump_recipe, load_recipe, parse_recipe

__all__ = [
    "AttackConfig",
    "DefensesConfig",
    "Recipe",
    "StrictModel",
    "dump_recipe",
    "load_attack_config",
    "load_recipe",
    "parse_recipe",
    "problems",
    "read_yaml",
    "validate",
]
