"""patrol-compress: privacy-oriented structured pruning for split inference.

Jobs live in :mod:`patrol_compress.api` (``from patrol_compress import api``);
the package re-exports them, but ``patrol_compress.train``, ``.report`` and
``.bench`` are the sub-packages of those names once imported. Importing the
package is cheap and loads no runtime backend (onnxruntime, OpenVINO,
TensorRT) and not even torch: the ``bench`` path must run on an edge
device that has only numpy and a runtime. Entry points are resolved lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prune": "patrol_compress.api",
    "train": "patrol_compress.api",
    "export": "patrol_compress.api",
    "bench": "patrol_compress.api",
    "attack": "patrol_compress.api",
    "defend": "patrol_compress.api",
    "load_model": "patrol_compress.api",
    "partitions": "patrol_compress.api",
    "load_recipe": "patrol_compress.config.recipe",
    "PatrolPruner": "patrol_compress.pruning.pruner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'patrol_compress' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
