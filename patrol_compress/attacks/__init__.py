"""Model inversion attacks on the edge partition, and their evaluation.

``attack(run_dir)`` is the entry point; :data:`ATTACKS` holds the attacks by
name: ``blackbox`` (He et al.'s inverse network on torch edge features),
``whitebox`` (rMLE with a TV prior, using the edge's weights), ``adaptive``
(the black-box attacker fed by the exported ``edge.onnx`` through ONNX
Runtime) and ``informed`` (the black-box attacker also told the cloud's
output). Importing this package registers all four; onnxruntime is loaded
only when the adaptive attack runs.
"""

from __future__ import annotations

from patrol_compress.attacks import adaptive as _adaptive  # noqa: F401  (registers "adaptive")
from patrol_compress.attacks import blackbox as _blackbox  # noqa: F401  (registers "blackbox")
from patrol_compress.attacks import informed as _informed  # noqa: F401  (registers "informed")
from patrol_compress.attacks import whitebox as _whitebox  # noqa: F401  (registers "whitebox")
from patrol_compress.attacks.base import ATTACKS, Attack, AttackContext, AttackError, Reconstruction
from patrol_compress.attacks.evaluate import DEFAULT_ATTACKS, attack, attack_model
from patrol_compress.config.privacy import AttackConfig, load_attack_config

__all__ = [
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackError",
    "Reconstruction",
    "attack",
    "attack_model",
    "load_attack_config",
]
