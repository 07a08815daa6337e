"""A run directory's saved model (compatibility re-exports).

The code lives in :mod:`patrol_compress.models.saved`, beside the networks it
saves and rebuilds. This module only re-exports its public functions so that
the older import path ``patrol_compress.run`` keeps working for users' code;
nothing inside the package imports through it.
"""

from __future__ import annotations

from patrol_compress.models.saved import (
    allowed_factory,
    load_resized,
    load_run_model,
    read_state_dict,
    save_model_file,
    save_run_model,
    state_sha256,
)

__all__ = [
    "allowed_factory",
    "load_resized",
    "load_run_model",
    "read_state_dict",
    "save_model_file",
    "save_run_model",
    "state_sha256",
]
