"""A network as its author wrote it, cut after named modules: the traced view.

The toolkit sees every network as ordered blocks (:class:`BlockNet`). A CNN
written the way torchvision writes them (a ``features`` Sequential, functional
calls in ``forward`` such as ``F.relu(self.bn1(x))``, ``torch.flatten`` or
``x.view(x.size(0), -1)``) is not a chain of its top-level children, so its
blocks cannot be read off its children. Instead its forward is traced
(``torch.fx``) and cut after the modules named by dotted paths
(``"features.6"``): the edge is everything the forward runs up to and including
that module, which must be a cut point of the graph (its output is all that the
rest of the forward uses). The pieces become ``GraphModule`` s that share the
model's own layers (the same module objects), chained in a :class:`TracedNet`:
one stage per cut, then the rest of the forward, the model's own head
included, as the ``head`` block.

Only the modules on the path to a cut are traced into (the root and
``features`` for ``"features.6"``); every other module is called as a whole, so
its forward may hold any Python (a squeeze-and-excitation block's
``b, c, _, _ = x.size()``, data-dependent branches). What cannot be traced, or
cut, is one :class:`~patrol_compress.errors.ModelError` line saying what to
change.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import fx, nn

from patrol_compress.errors import ModelError, first_line
from patrol_compress.models.blocknet import BlockNet

REST = "rest"
"""Child name of the piece after the last cut (the ``head`` block)."""


class _CutTracer(fx.Tracer):
    """Traces into the root and the ancestors of the cuts only; every other module is a leaf."""

    def __init__(self, ancestors: set[str]) -> None:
        super().__init__()
        self.ancestors = ancestors

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name not in self.ancestors


class TracedNet(BlockNet):
    """A traced model's pieces as a BlockNet: stages ending at ``ends``, then the rest.

    Block names are the cut modules' paths (``"features.6"``), so mask summaries
    and errors name the model's own modules; children are ``stage1``..``stageK``
    and ``rest``. :meth:`source_paths` maps each module the pieces call back to
    its path in the original model.
    """

    def __init__(self, pieces: OrderedDict[str, fx.GraphModule], ends: Sequence[str]) -> None:
        names = list(pieces)
        blocks = [(end, [child]) for end, child in zip(ends, names[:-1], strict=True)]
        blocks.append(("head", [names[-1]]))
        super().__init__(OrderedDict(pieces), blocks, list(ends))
        self.ends: tuple[str, ...] = tuple(ends)

    def source_paths(self) -> list[tuple[str, str]]:
        """(path in this view, path in the original model) of every module a piece calls."""
        out = []
        for child, piece in self.named_children():
            assert isinstance(piece, fx.GraphModule)
            for node in piece.graph.nodes:
                if node.op == "call_module":
                    out.append((f"{child}.{node.target}", str(node.target)))
        return out

    def own_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict of the original model (``features.0.weight``) under this view's keys.

        A state dict already in this view's keys is returned as it is.
        """
        own = self.state_dict()
        if set(state) <= set(own):
            return state
        mapping = {}
        for key in own:
            _, _, source = key.partition(".")
            mapping[source] = key
        return {mapping.get(k, k): v for k, v in state.items()}


def trace_stages(model: nn.Module, ends: Sequence[str], example: torch.Tensor) -> TracedNet:
    """``model`` cut after each module in ``ends`` (dotted paths), as a :class:`TracedNet`."""
    ends = list(dict.fromkeys(ends))
    for path in ends:
        _check_path(model, path)
    ancestors = {p for path in ends for p in _prefixes(path)}
    graph = _trace(model, ancestors, ends)
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    cut_nodes = [_the_call(nodes, model, path) for path in ends]
    order = sorted(range(len(ends)), key=lambda i: pos[cut_nodes[i]])
    ends = [ends[i] for i in order]
    cut_nodes = [cut_nodes[i] for i in order]
    for path, node in zip(ends, cut_nodes, strict=True):
        _check_cut(model, nodes, pos, node, path)
    pieces: OrderedDict[str, fx.GraphModule] = OrderedDict()
    bounds = [None, *cut_nodes, None]
    for i in range(len(bounds) - 1):
        name = f"stage{i + 1}" if i < len(cut_nodes) else REST
        pieces[name] = _piece(model, nodes, pos, bounds[i], bounds[i + 1])
    _check_not_shared(pieces, ends)
    view = TracedNet(pieces, ends)
    view.train(model.training)
    return view


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _check_path(model: nn.Module, path: str) -> None:
    if not isinstance(path, str) or not path:
        raise ModelError(f"split: expected a module path such as 'features.6', found {path!r}")
    try:
        model.get_submodule(path)
    except AttributeError:
        children = [n for n, _ in model.named_children()]
        raise ModelError(
            f"split '{path}': {type(model).__name__} has no module '{path}' (its top-level "
            f"modules: {children}); name a module by its dotted path, e.g. 'features.6'"
        ) from None


def _trace(model: nn.Module, ancestors: set[str], ends: list[str]) -> fx.Graph:
    concrete = {}
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ModelError(
                f"{type(model).__name__}.forward takes more than the image batch "
                f"(also '{p.name}'); the edge and the cloud each take one tensor"
            )
        concrete[p.name] = p.default
    try:
        return _CutTracer(ancestors).trace(model, concrete_args=concrete or None)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, ...)
        path = " -> ".join([type(model).__name__, *sorted(ancestors, key=len)])
        raise ModelError(
            f"cannot trace the forward down to '{ends[-1]}' (through {path}): "
            f"{first_line(exc)}; the forwards on that path must be traceable by torch.fx "
            "(no branching on tensor values, no unpacking of x.size()): move such code into "
            "a submodule off that path, or pass blocks naming top-level children in order"
        ) from None


def _the_call(nodes: list[fx.Node], model: nn.Module, path: str) -> fx.Node:
    calls = [n for n in nodes if n.op == "call_module" and n.target == path]
    if len(calls) != 1:
        how = "never runs in" if not calls else f"runs {len(calls)} times in"
        raise ModelError(
            f"split '{path}': this module {how} {type(model).__name__}'s forward; the split "
            "must name a module that runs exactly once"
        )
    return calls[0]


def _crossing(
    nodes: list[fx.Node], pos: dict[fx.Node, int], cut: fx.Node
) -> tuple[fx.Node, fx.Node] | None:
    """A value computed before ``cut`` and used after it (None: ``cut`` is a cut point)."""
    i = pos[cut]
    for n in nodes[i + 1 :]:
        for m in n.all_input_nodes:
            if pos[m] < i and m.op != "get_attr":
                return m, n
    return None


def _check_cut(
    model: nn.Module, nodes: list[fx.Node], pos: dict[fx.Node, int], cut: fx.Node, path: str
) -> None:
    found = _crossing(nodes, pos, cut)
    if found is None:
        return
    before, after = found
    calls = [n for n in nodes if n.op == "call_module"]
    once = [n for n in calls if sum(c.target == n.target for c in calls) == 1]
    cuts = [n for n in once if _crossing(nodes, pos, n) is None]
    near = sorted(sorted(cuts, key=lambda n: abs(pos[n] - pos[cut]))[:4], key=lambda n: pos[n])
    hint = ", ".join(repr(str(n.target)) for n in near) or "a module that runs after the join"
    raise ModelError(
        f"split '{path}': the network cannot be cut there, because the forward passes "
        f"'{before.name}' (computed before it) on to '{after.name}' after it (a skip "
        f"connection around the split); name a module whose output is all that flows on, "
        f"e.g. {hint}"
    )


def _piece(
    model: nn.Module,
    nodes: list[fx.Node],
    pos: dict[fx.Node, int],
    start: fx.Node | None,
    stop: fx.Node | None,
) -> fx.GraphModule:
    """The forward between two cuts (``start`` excluded, ``stop`` included) as a GraphModule."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    first = nodes[0] if start is None else start
    env[first] = graph.placeholder("x")
    lo = pos[first] + 1
    hi = len(nodes) if stop is None else pos[stop] + 1
    for n in nodes[lo:hi]:
        if n.op == "placeholder":
            env[n] = graph.node_copy(n)  # a parameter with a default (baked in)
            continue
        for m in n.all_input_nodes:
            if m not in env and m.op == "get_attr":
                env[m] = graph.node_copy(m)
        env[n] = graph.node_copy(n, lambda a: env[a])
    if stop is not None:
        graph.output(env[stop])
    graph.lint()
    return fx.GraphModule(model, graph)


def _check_not_shared(pieces: OrderedDict[str, fx.GraphModule], ends: Sequence[str]) -> None:
    """A layer with weights must run in one piece: the edge and the cloud cannot share it."""
    owner: dict[int, str] = {}
    for name, piece in pieces.items():
        for key, p in piece.named_parameters():
            if id(p) in owner and owner[id(p)] != name:
                raise ModelError(
                    f"'{key}' is used both before and after the cut at {list(ends)}: a layer "
                    "with weights cannot run on both the edge and the cloud; cut elsewhere"
                )
            owner[id(p)] = name


def check_traced(view: TracedNet, model: nn.Module, example: torch.Tensor) -> None:
    """The traced pieces, chained, must compute the model's own forward (eval mode)."""
    flags = [(m, m.training) for m in [*model.modules(), *view.modules()]]
    try:
        model.eval()
        view.eval()
        with torch.no_grad():
            own = model(example[:1])
            out = _run_pieces(view, example[:1])
    finally:
        for m, was in flags:
            m.training = was
    if not same_output(out, own):
        raise ModelError(
            f"the traced pieces of {type(model).__name__} do not compute its own forward "
            "(state kept between calls, or randomness in eval mode?); name the split with "
            "blocks of top-level children instead"
        )


def same_output(out: object, own: object) -> bool:
    """Whether a re-assembled network (pieces, or children in order) computed the model's own
    output: both tensors of one shape, equal within float reordering (rtol 1e-4, atol 1e-5)."""
    return (
        isinstance(out, torch.Tensor)
        and isinstance(own, torch.Tensor)
        and out.shape == own.shape
        and torch.allclose(out, own, rtol=1e-4, atol=1e-5)
    )


def _run_pieces(view: TracedNet, x: torch.Tensor) -> object:
    """The view's forward, checking that every cut passes one tensor on."""
    h: object = x
    for i, (child, piece) in enumerate(view.named_children()):
        h = piece(h)
        if child != REST and not isinstance(h, torch.Tensor):
            raise ModelError(
                f"split '{view.ends[i]}' returns {type(h).__name__}; the edge must end in "
                "one tensor (the features the device sends)"
            )
    return h
