"""``from patrol_compress.pruner import PatrolPruner`` keeps working: the engine lives in
:mod:`patrol_compress.pruning.pruner`, the one PATROL loop the recipe pipeline drives too."""

from __future__ import annotations

from patrol_compress.pruning.pruner import PatrolPruner

__all__ = ["PatrolPruner"]
