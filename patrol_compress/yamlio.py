"""Bounded YAML: recipes and attack configs read with limits, errors in one line.

``yaml.safe_load`` refuses Python tags but not size: a "billion laughs"
recipe (nine anchors, each a list of nine aliases of the previous one) is a
few hundred bytes that stand for 10^9 values. PyYAML shares the aliased
objects, so loading is quick, but everything after it (validation, an error
message quoting the value, a resolved recipe dumped to disk) walks the
expanded value and hangs while memory grows. So before anything is built,
the composed node graph is measured as if every alias were expanded (shared
nodes are counted once per use, in time proportional to the distinct nodes),
and a file is refused when it is larger than :data:`MAX_BYTES`, expands to
more than :data:`MAX_NODES` values or :data:`MAX_EXPANDED_BYTES` bytes of
text, or nests deeper than :data:`MAX_DEPTH`. Counting values alone let 300
aliases of one 100 KB string through: a 30 MB value that validation, the
resolved recipe and the run folder each copied again. Real recipes are a few
KB and a few hundred values.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from patrol_compress.errors import PatrolError, RecipeError

MAX_BYTES = 1 << 20
MAX_EXPANDED_BYTES = 1 << 20
"""Scalar text of the document with every alias expanded: no more than a file may hold."""
MAX_NODES = 100_000
MAX_DEPTH = 64


class _Limit(Exception):
    """The document exceeds a limit; the message says which."""


def _scalar_bytes(node: yaml.Node) -> int:
    """UTF-8 bytes of a scalar's text (0 for a sequence or mapping)."""
    if not isinstance(node, yaml.ScalarNode):
        return 0
    return len(str(node.value).encode("utf-8", "surrogatepass"))


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, scalar bytes) the document holds with every alias expanded.

    Memoised per node, so a DAG of aliases costs its distinct nodes, however
    often each is used.
    """
    sizes: dict[int, tuple[int, int]] = {}

    def size(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise _Limit(f"nests deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in sizes:
            if sizes[key][0] < 0:
                raise _Limit("refers to itself (a recursive alias)")
            return sizes[key]
        sizes[key] = (-1, 0)  # being measured: meeting it again below means a cycle
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        nodes, text = 1, _scalar_bytes(node)
        for child in children:
            n, b = size(child, depth + 1)
            nodes, text = nodes + n, text + b
        if nodes > MAX_NODES:
            raise _Limit(
                f"expands to more than {MAX_NODES:,} values (aliases of aliases: "
                "a 'billion laughs' document)"
            )
        if text > MAX_EXPANDED_BYTES:
            raise _Limit(
                f"expands to more than {MAX_EXPANDED_BYTES:,} bytes of text once its aliases "
                "are expanded (a large value repeated by aliases)"
            )
        sizes[key] = (nodes, text)
        return sizes[key]

    return size(root, 0)


def load_yaml_text(text: str, source: str, error: type[PatrolError] = RecipeError) -> object:
    """Parse one YAML document with the limits above; any problem raises ``error`` (one line)."""
    if len(text) > MAX_BYTES:
        raise error(f"{source}: {len(text):,} characters; a recipe is at most {MAX_BYTES:,}")
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_size(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _Limit as exc:
        raise error(f"{source}: refused: the YAML {exc}") from None
    except RecursionError:
        raise error(f"{source}: refused: the YAML nests too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{source}: malformed YAML{where}: {str(problem)[:120]}") from None


def load_yaml_file(path: Path | str, error: type[PatrolError] = RecipeError) -> object:
    """Read ``path`` (UTF-8, at most :data:`MAX_BYTES`) and parse it with :func:`load_yaml_text`.

    This is the one loader for every YAML file a user hands us (recipes, attack
    configs); ``error`` is the PatrolError subclass to raise.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: file not found")
    try:
        if p.stat().st_size > MAX_BYTES:
            raise error(f"{p}: {p.stat().st_size:,} bytes; a recipe is at most {MAX_BYTES:,}")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{p}: expected UTF-8 text, found undecodable bytes") from None
    except OSError as exc:
        raise error(f"{p}: cannot read it ({exc.strerror or exc})") from None
    return load_yaml_text(text, str(p), error)
