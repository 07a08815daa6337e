"""The import graph runs one way (issue 15): no cycles, jobs below the pipeline, torch-free files.

Imports are read with ``ast``, ``if TYPE_CHECKING:`` blocks left out (they never
run). Module-level imports must form no cycle, or importing would fail. Imports
inside functions cannot break an import, but a circle of them (``onnx`` calling
into ``onnx_int8``, which calls back into ``onnx``) still means two modules
that only make sense together; they must form no cycle either, but for the one
listed in :data:`KNOWN_FUNCTION_LEVEL_CYCLES`. The root ``exporters/`` folder
counts as ``patrol_compress.exporters``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS_BELOW_PIPELINE = ("attacks", "defenses", "report")
ABOVE_THEM = ("patrol_compress.pipeline", "patrol_compress.pruning.patrol")
# Compatibility re-exports (of patrol_compress.config, and of models.saved),
# kept for users' imports only.
COMPAT_SHIMS = ("patrol_compress.recipe", "patrol_compress.privacy_config", "patrol_compress.run")
# The frontier runs its points through the package's front doors (api.train,
# api.prune), and api.frontier is one of those doors: a deliberate circle, left
# for now. Any other circle of function-level imports fails the test.
KNOWN_FUNCTION_LEVEL_CYCLES = [
    [
        "patrol_compress.api",
        "patrol_compress.frontier",
        "patrol_compress.frontier.points",
        "patrol_compress.frontier.run",
    ],
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in ((ROOT / "patrol_compress", []), (ROOT / "exporters", ["exporters"])):
        for path in folder.rglob("*.py"):
            parts = ["patrol_compress", *prefix, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, module_level: bool) -> set[str]:
    """Modules of the package that ``name`` imports (at module level only, or anywhere)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if nested and module_level:
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    visit(sub)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    # ``import a.b.c`` also runs a and a.b; a module's own parents are already running.
    out = set()
    for target in found:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in MODULES and mod != name and not name.startswith(mod + "."):
                out.add(mod)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_module_level_import_graph_has_no_cycle() -> None:
    graph = {m: _imports(m, p, module_level=True) for m, p in MODULES.items()}
    assert _cycles(graph) == []


def test_function_level_imports_close_no_new_cycle() -> None:
    """Every import counts here, those inside functions too.

    The exporters' float and INT8 halves (``onnx``/``onnx_int8``,
    ``openvino``/``openvino_int8``) and the edge budget and its latency timer
    (``pruning.budget``/``pruning.latency``) used to call into each other
    from inside functions.
    """
    graph = {m: _imports(m, p, module_level=False) for m, p in MODULES.items()}
    assert sorted(_cycles(graph)) == KNOWN_FUNCTION_LEVEL_CYCLES


def test_the_cycle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The circle budget/latency had (one side imported only inside a function) is found."""
    budget, latency = "patrol_compress.pruning.budget", "patrol_compress.pruning.latency"
    inside = tmp_path / "budget.py"
    inside.write_text(f"def f() -> None:\n    from {latency} import measure_model_ms\n")
    top = tmp_path / "latency.py"
    top.write_text(f"from {budget} import LatencyLimit\n")
    assert _imports(budget, inside, module_level=True) == set()
    graph = {
        budget: _imports(budget, inside, module_level=False),
        latency: _imports(latency, top, module_level=False),
    }
    assert graph[budget] == {latency}
    assert _cycles(graph) == [[budget, latency]]


def test_attacks_defenses_and_report_do_not_import_the_pipeline_or_patrol_training() -> None:
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in JOBS_BELOW_PIPELINE:
            for target in _imports(name, path, module_level=False):
                if target in ABOVE_THEM:
                    bad.append(f"{path.relative_to(ROOT)} -> {target}")
    assert bad == []


def test_the_library_imports_no_compatibility_shim() -> None:
    """``patrol_compress.recipe``, ``.privacy_config`` and ``.run`` are for users: the package
    imports the modules they re-export, so a shim can never sit inside a cycle."""
    bad = []
    for name, path in MODULES.items():
        if name not in COMPAT_SHIMS:
            for target in _imports(name, path, module_level=False):
                if target in COMPAT_SHIMS:
                    bad.append(f"{path.relative_to(ROOT)} -> {target}")
    assert bad == []


@pytest.mark.parametrize("module", ["patrol_compress.contracts", "patrol_compress.edge_noise"])
def test_edge_side_modules_import_no_torch(module: str) -> None:
    """The file contracts are read on edge devices and by the report, and a noisy uplink's
    edge draws its noise on the device: no torch there."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
