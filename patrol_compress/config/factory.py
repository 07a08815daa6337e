"""Which ``model.factory`` names may ever be imported (torch-free).

A custom architecture is rebuilt by importing ``pkg.module:function`` and
calling it. The name travels in recipes and in every saved ``model.json``, so
it is checked as data before anything is imported: it must be a plain dotted
module path and a public function name, and it must not name a module whose
functions run code, fetch code or touch the machine rather than build a
network (``torch.hub:load`` runs a ``hubconf.py``; ``os``, ``subprocess``,
``builtins`` and the rest of the standard library build no model). This
list is a second line of defence: a run folder's factory is imported only
when the user allows it (see :func:`patrol_compress.models.saved.load_run_model`).
"""

from __future__ import annotations

import re
import sys

_SPEC = re.compile(r"^[A-Za-z]\w*(\.[A-Za-z]\w*)*:[A-Za-z]\w*$")

REFUSED_MODULES = (
    "torch.hub",
    "torch.utils.cpp_extension",
    "torch.package",
    "torch.jit",
    "torch.serialization",
    "torch.multiprocessing",
    "torch.distributed",
    "torch.utils.data",
    "torch.compiler",
    "numpy",
    "yaml",
    "dill",
    "joblib",
    "cloudpickle",
    "IPython",
    "setuptools",
    "pkg_resources",
    "pip",
    "pytest",
)
"""Packages beside the standard library whose functions load, compile or run code."""


def _refused_module(module: str) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    return any(module == m or module.startswith(f"{m}.") for m in REFUSED_MODULES)


def check_factory_spec(spec: str) -> None:
    """Raise ValueError (one sentence) unless ``spec`` may name a model factory."""
    if not _SPEC.match(spec):
        raise ValueError(
            "model.factory must look like 'pkg.module:function' (public names: letters, digits "
            f"and '_', not starting with '_'), found {spec[:80]!r}"
        )
    module = spec.partition(":")[0]
    if _refused_module(module):
        raise ValueError(
            f"model.factory {spec!r} names '{module}', a module that runs or loads code rather "
            "than building a network (the standard library, torch.hub, ...); refused"
        )
