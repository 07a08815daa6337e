"""Build the network a recipe describes, as a :class:`BlockNet`.

Built-in ResNets get the re-id head of Fig. 3. A user's own CNN plugs in with
``model.arch: custom`` and ``model.factory: "pkg.module:function"``: the
function is called with ``num_classes``, ``in_channels`` and
``model.factory_kwargs`` and returns either a ready BlockNet or any module, divided into stages by
``model.blocks``: groups of its top-level children (its forward must run them
in order; with no head block listed, the re-id head is appended on the last
stage's output), or the module paths each stage ends with (the forward is
traced and cut there, :mod:`patrol_compress.models.traced`; the model keeps
its own head).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from patrol_compress.config.recipe import BlocksConfig, ModelConfig
from patrol_compress.errors import ModelError, first_line
from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.head import ReidHead, Task
from patrol_compress.models.resnet import resnet_backbone
from patrol_compress.models.traced import TracedNet, check_traced, trace_stages

Factory = Callable[..., Any]
"""A custom architecture's factory, called with num_classes, in_channels and factory_kwargs."""


def build_model(
    config: ModelConfig,
    num_classes: int,
    in_channels: int = 3,
    task: Task = "reid",
    image_size: int = 64,
    factory: Factory | None = None,
) -> BlockNet:
    """The network ``config`` describes; ``factory`` (if given) replaces importing
    ``config.factory`` (code the caller already holds)."""
    if config.arch == "custom":
        return _custom(config, num_classes, in_channels, task, image_size, factory)
    layers, blocks, out_ch = resnet_backbone(
        config.arch, config.width, config.stem, config.last_stride, in_channels
    )
    layers["head"] = ReidHead(out_ch, num_classes, task)
    blocks.append(("head", ["head"]))
    return BlockNet(layers, blocks, [b for b, _ in blocks[1:-1]])


def import_factory(spec: str) -> Factory:
    """The callable ``'pkg.module:function'`` names, or one ModelError line saying why not.

    The module is imported as Python imports anything: from the installed
    packages and the folders on ``PYTHONPATH`` (the ``patrol-compress`` command
    does not look in the current folder), so the message says how to fix that.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"model.factory '{spec}': cannot import module '{module_name}' ({exc}); it must be "
            "importable: add its folder to PYTHONPATH (e.g. PYTHONPATH=. when it is in the "
            "current folder) or pip install its package"
        ) from None
    except Exception as exc:  # the user's module failed while importing (SyntaxError, ...)
        first = first_line(exc, "")
        raise ModelError(
            f"model.factory '{spec}': importing '{module_name}' failed: "
            f"{type(exc).__name__}: {first}"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"model.factory '{spec}': '{module_name}' has no callable '{attr}'")
    return fn


def _custom(
    config: ModelConfig,
    num_classes: int,
    in_channels: int,
    task: Task,
    image_size: int,
    factory: Factory | None,
) -> BlockNet:
    spec = str(config.factory)
    fn = factory if factory is not None else import_factory(spec)
    try:
        net = fn(num_classes=num_classes, in_channels=in_channels, **config.factory_kwargs)
    except Exception as exc:  # the user's function: a wrong signature or its own error
        first = first_line(exc, "")[:200]  # the type is named beside it
        raise ModelError(
            f"model.factory '{spec}' failed when called with num_classes, in_channels and "
            f"factory_kwargs: {type(exc).__name__}: {first}"
        ) from None
    if isinstance(net, BlockNet):
        return net
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model.factory '{config.factory}' returned {type(net).__name__}, not a module"
        )
    if config.blocks is None:
        raise ModelError(
            "model.blocks is required when model.factory returns a plain module: the module "
            "paths each stage ends with (e.g. [features.3, features.6]), or {stem, stages, head} "
            "naming its top-level children in the order its forward runs them"
        )
    if isinstance(config.blocks, list):
        example = torch.zeros(1, in_channels, image_size, image_size)
        view = trace_stages(net, config.blocks, example)
        check_traced(view, net, example)
        return view
    return wrap_module(net, config.blocks, num_classes, in_channels, task, image_size)


def own_state(model: BlockNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s keys (a traced model's own keys, ``features.0.weight``, mapped)."""
    return model.own_state(state) if isinstance(model, TracedNet) else state


def block_view(net: nn.Module, blocks: BlocksConfig) -> BlockNet:
    """A BlockNet of ``net``'s own top-level children grouped as ``blocks`` (shared, not copied).

    Every child must be named exactly once: a child left out would silently
    vanish from the network (its forward runs the children in order).
    """
    children = dict(net.named_children())
    spec: list[tuple[str, list[str]]] = [("stem", list(blocks.stem))]
    spec += [(f"stage{i + 1}", list(s)) for i, s in enumerate(blocks.stages)]
    if blocks.head:
        spec.append(("head", list(blocks.head)))
    named = [n for _, names in spec for n in names]
    unknown = [n for n in named if n not in children]
    if unknown:
        raise ModelError(
            f"model.blocks names child '{unknown[0]}', which the module does not have "
            f"(children: {list(children)})"
        )
    left_out = [n for n in children if n not in named]
    if left_out:
        raise ModelError(
            f"model.blocks leaves out the module's children {left_out}: name every top-level "
            "child in stem, stages or head (the network runs them in that order)"
        )
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise ModelError(f"model.blocks names the children {twice} more than once")
    layers: OrderedDict[str, nn.Module] = OrderedDict((n, children[n]) for n in named)
    return BlockNet(layers, spec, [b for b, _ in spec if b.startswith("stage")])


def wrap_module(
    net: nn.Module,
    blocks: BlocksConfig,
    num_classes: int,
    in_channels: int = 3,
    task: Task = "reid",
    image_size: int = 64,
) -> BlockNet:
    """Regroup a plain module's children into a BlockNet (appending a head if none)."""
    body = block_view(net, blocks)
    if blocks.head:
        return body
    with torch.no_grad():
        was = body.training
        body.eval()
        out = body(torch.zeros(1, in_channels, image_size, image_size))
        body.train(was)
    layers = OrderedDict(body.named_children())
    layers["head"] = ReidHead(int(out.shape[1]), num_classes, task)
    return BlockNet(layers, [*body.block_spec, ("head", ("head",))], body.stage_names)


def key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """'N missing keys (first: a, b, c); M unexpected keys (...)' for a weights error."""
    found = [
        f"{len(keys)} {what} keys (first: {', '.join(keys[:3])})"
        for what, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    return "; ".join(found)


def load_own_weights(model: BlockNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a custom model's own trained weights (``model.pretrained`` of ``arch: custom``).

    Every key must match by name and shape, the user's own head included; only
    the re-id head this module appended (when ``model.blocks`` lists no head)
    may be absent, and starts untrained. Returns the keys left at their
    initialisation.
    """
    own = model.state_dict()
    appended = isinstance(getattr(model, "head", None), ReidHead)
    missing = [k for k in own if k not in state]
    fresh = [k for k in missing if appended and k.startswith("head.")]
    missing = [k for k in missing if k not in fresh]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ModelError(
            f"weights do not fit the model: {key_mismatch(missing, unexpected)} (a custom "
            "model's own head belongs in model.blocks.head; without one a re-id head is appended)"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelError(
                f"'{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return fresh
