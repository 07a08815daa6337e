"""Baseline defenses of the paper's Section IV-A, for comparison with PATROL.

``defend(run)`` evaluates strength sweeps of the registered defenses
(:data:`DEFENSES`): ``noise``, ``dropout``, ``skip`` (random perturbations of
the deployed edge, :mod:`.perturb`) and ``app`` (adversarial training with a
reconstructor and a discriminator, :mod:`.app`). Importing the package
registers all four.
"""

from __future__ import annotations

from patrol_compress.defenses import app as _app  # noqa: F401  (registers "app")
from patrol_compress.defenses import perturb as _perturb  # noqa: F401  (registers the rest)
from patrol_compress.defenses.base import DEFENSES, Defense, DefenseContext
from patrol_compress.defenses.sweep import defend

__all__ = ["DEFENSES", "Defense", "DefenseContext", "defend"]
