"""Datasets: the generated default and real re-id / classification folders.

``build_data(config)`` looks the loader up in :data:`DATASETS` by
``config.kind``; every loader returns a :class:`DataBundle`.
"""

from __future__ import annotations

from collections.abc import Callable

from patrol_compress.config.recipe import DataConfig
from patrol_compress.data.base import ArrayDataset, DataBundle, FileDataset, ReidDataset
from patrol_compress.registry import Registry

DATASETS: Registry[Callable[[DataConfig], DataBundle]] = Registry("dataset")


def build_data(config: DataConfig) -> DataBundle:
    _load_builtin_loaders()
    return DATASETS.get(config.kind)(config)


def _load_builtin_loaders() -> None:
    # Imported for their registration side effect, once.
    from patrol_compress.data import (  # noqa: F401
        fashion_mnist,
        imagefolder,
        synthetic,
        veri,
        veriwild,
    )


__all__ = ["ArrayDataset", "DATASETS", "DataBundle", "FileDataset", "ReidDataset", "build_data"]
