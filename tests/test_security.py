"""Security: no unpickling or dynamic code in the package, no locals in tracebacks, and
nothing loaded from an artifact that its manifest did not vouch for.

Also covered elsewhere: bench on an artifact with a flipped or appended byte in
edge.onnx (tests/test_bad_input.py::test_artifact_no_longer_matches_its_manifest,
tests/test_bench.py::test_tampered_artifact_is_refused_before_timing) and the
adaptive attack on a tampered edge.onnx
(tests/test_attacks.py::test_tampered_edge_onnx_is_refused).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from patrol_compress.bench import bench, verify_manifest
from patrol_compress.errors import ArtifactError
from patrol_compress.exporters import export_partitions
from patrol_compress.models import build_model
from patrol_compress.recipe import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("patrol_compress", "exporters", "benchmarks", "tests")

# --------------------------------------------------------------------------- source scan

PICKLE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"})
BANNED_IMPORTS = PICKLE_MODULES | {"shelve"}  # shelve unpickles its values
YAML_UNSAFE = frozenset(
    {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
)
TORCH_LOADS = frozenset({"torch.load", "torch.serialization.load"})
DYNAMIC_CODE = frozenset({"eval", "exec"})


class _Scanner(ast.NodeVisitor):
    """Finds the banned constructs; names are resolved through import aliases."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top in BANNED_IMPORTS:
                self.found.append((node.lineno, f"import {alias.name}"))
            self.aliases[alias.asname or top] = alias.name if alias.asname else top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in BANNED_IMPORTS:
            self.found.append((node.lineno, f"from {module} import ..."))
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        self.generic_visit(node)

    def _dotted(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_CODE:
            self.found.append((node.lineno, f"{node.func.id}()"))
        elif name in {f"builtins.{f}" for f in DYNAMIC_CODE}:
            self.found.append((node.lineno, f"{name}()"))
        elif name in TORCH_LOADS and not _is_const(kw.get("weights_only"), True):
            self.found.append((node.lineno, f"{name}() without weights_only=True"))
        elif name is not None and name.startswith("yaml.") and name[5:] in YAML_UNSAFE:
            self.found.append((node.lineno, f"{name}() (only yaml.safe_load is allowed)"))
        elif name is not None and name.split(".")[0] in PICKLE_MODULES and "load" in name:
            self.found.append((node.lineno, f"{name}()"))
        elif name == "numpy.load" and not _is_const(kw.get("allow_pickle", False), False):
            self.found.append((node.lineno, "numpy.load() with allow_pickle not False"))
        self.generic_visit(node)


def _is_const(node: ast.expr | bool | None, value: bool) -> bool:
    """``node`` is the literal ``value`` (a plain bool stands for an absent keyword's default)."""
    if isinstance(node, bool):
        return node is value
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every banned construct in ``source``."""
    scanner = _Scanner()
    scanner.visit(ast.parse(source, filename))
    return [f"{filename}:{line}: {what}" for line, what in sorted(scanner.found)]


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_package_has_no_unpickling_or_dynamic_code() -> None:
    files = scanned_files()
    assert len(files) > 50 and any(p.name == "saved.py" for p in files)  # the scan sees the code
    problems = [
        problem
        for path in files
        for problem in scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert problems == [], "\n".join(problems)


def test_scanner_catches_each_violation_with_file_and_line() -> None:
    source = textwrap.dedent("""\
        import pickle
        import dill as d
        from joblib import load
        import torch as T, numpy as np, yaml
        from torch import load as tload
        T.load("a.pt")
        T.load("a.pt", weights_only=False)
        tload("a.pt", map_location="cpu")
        yaml.load(text, Loader=yaml.Loader)
        pickle.loads(blob)
        np.load("a.npz", allow_pickle=True)
        eval("1 + 1")
        exec("x = 1")
        import cPickle
        # what is allowed:
        T.load("a.pt", weights_only=True)
        yaml.safe_load(text)
        np.load("a.npz", allow_pickle=False)
        np.load("a.npy")
        model.eval()
        obj.exec()
        """)
    found = scan_source(source, "bad.py")
    assert found == [
        "bad.py:1: import pickle",
        "bad.py:2: import dill",
        "bad.py:3: from joblib import ...",
        "bad.py:6: torch.load() without weights_only=True",
        "bad.py:7: torch.load() without weights_only=True",
        "bad.py:8: torch.load() without weights_only=True",
        "bad.py:9: yaml.load() (only yaml.safe_load is allowed)",
        "bad.py:10: pickle.loads()",
        "bad.py:11: numpy.load() with allow_pickle not False",
        "bad.py:12: eval()",
        "bad.py:13: exec()",
        "bad.py:14: import cPickle",
    ]


# --------------------------------------------------------------------------- tracebacks

BOOM = """
import os, sys
import patrol_compress.api as api
from patrol_compress.errors import DataError

def prune(recipe, out, resume, force, quiet, **options):
    secret_in_a_local = os.environ["PATROL_TEST_SECRET"]
    if sys.argv[1] == "user-error":
        raise DataError("a user error")
    raise RuntimeError("an internal failure")

api.prune = prune
from patrol_compress.cli.app import app
app(sys.argv[2:], prog_name="patrol-compress")
"""


def test_app_is_built_without_locals_in_tracebacks() -> None:
    from patrol_compress.cli.app import app

    assert app.pretty_exceptions_show_locals is False


@pytest.mark.parametrize(
    ("error", "debug"),
    [("internal", False), ("internal", True), ("user-error", True)],
)
def test_tracebacks_never_print_local_values(tmp_path: Path, error: str, debug: bool) -> None:
    script = tmp_path / "boom.py"
    script.write_text(BOOM)
    secret = "".join(reversed("PX-4417-eulav-terces"))  # not in any source line shown
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_TYPER", "PATROL"))}
    env["PATROL_TEST_SECRET"] = secret
    args = [*(["--debug"] if debug else []), "prune", str(tmp_path / "r.yaml")]
    proc = subprocess.run(
        [sys.executable, str(script), error, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output  # a traceback, not the one-line contract
    expected = "RuntimeError: an internal failure" if error == "internal" else "a user error"
    assert expected in output and "Traceback" in output
    assert "secret_in_a_local = os.environ" in output  # the frame is shown ...
    assert secret not in output  # ... but not its locals' values


# --------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: conftest's per-test setting is not active
    try:
        model = build_model(ModelConfig(width=0.125, stem="small"), num_classes=10).eval()
        out = tmp_path_factory.mktemp("sec") / "onnx-split2-fp32"
        export_partitions(model, 2, out, "onnx", "fp32", (3, 32, 32))
    finally:
        torch.set_num_threads(before)
    yield out


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


def _edit_manifest(folder: Path, edit: dict[str, object | None]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in edit.items():
        if entry is None:
            del manifest["files"][name]
        else:
            manifest["files"][name] = entry
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_bench_loads_no_edge_file_the_manifest_does_not_list(
    artifact: Path, tmp_path: Path
) -> None:
    """Dropping edge.onnx from the manifest must not skip its checksum."""
    folder = _copy(artifact, tmp_path)
    _edit_manifest(folder, {"edge.onnx": None})
    verify_manifest(folder)  # what is listed is intact ...
    with pytest.raises(ArtifactError, match=r"edge\.onnx: not listed in manifest\.json"):
        bench(folder, "onnxruntime", batches=(1,), warmup=0, runs=1, threads=1)
    from patrol_compress.cli.app import app

    result = CliRunner().invoke(app, ["bench", str(folder), "--batch", "1", "--runs", "1"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{folder / 'edge.onnx'}: not listed in manifest.json" in lines[0]


@pytest.mark.openvino
def test_openvino_bench_ignores_no_planted_ir(artifact: Path, tmp_path: Path) -> None:
    """An edge.xml/edge.bin dropped next to an ONNX export would be preferred by OpenVINO."""
    pytest.importorskip("openvino")
    folder = _copy(artifact, tmp_path)
    (folder / "edge.xml").write_text("<net/>")
    (folder / "edge.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ArtifactError, match=r"edge\.xml: not listed in manifest\.json"):
        bench(folder, "openvino", batches=(1,), warmup=0, runs=1, threads=1)


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/hostname"])
def test_manifest_cannot_point_outside_the_artifact(
    artifact: Path, tmp_path: Path, name: str
) -> None:
    folder = _copy(artifact, tmp_path)
    (tmp_path / "outside.onnx").write_bytes(b"x")
    _edit_manifest(folder, {name: {"sha256": "0" * 64, "bytes": 1}})
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        verify_manifest(folder)
