"""What a frontier measures: its methods, knobs, seeds and targets, checked before any work.

A *knob* is the ``patrol:`` setting varied to span accuracy (``[METHOD:]PATH=V1,V2``,
e.g. ``recovery_epochs=4,8,12`` or ``uplink:uplink.bits=8,4,2``); every method
needs one. A list setting is scaled by each value
(``patrol:lipschitz.alphas=0.5,1,2``). Every point's recipe is built and
validated when the plan is made, so a misspelt path, a value the schema
refuses or an unknown method is one line (:class:`FrontierError`) before a
target is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from patrol_compress.config.recipe import Recipe
from patrol_compress.errors import PatrolError
from patrol_compress.frontier.methods import BASELINE, METHODS, deep_merge
from patrol_compress.registry import RegistryError


class FrontierError(PatrolError):
    """A frontier cannot be planned as asked (method, knob, seeds)."""


@dataclass(frozen=True)
class Knob:
    path: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def label(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Point:
    """One point of the frontier: a method at a knob value, a seed and a target seed."""

    method: str
    knob: Knob
    value: float
    seed: int
    target_seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.knob.label}{self.value:g}-s{self.seed}-t{self.target_seed}"


def parse_knobs(specs: list[str], methods: list[str]) -> dict[str, Knob]:
    """Per method, the knob of ``specs`` (``[METHOD:]PATH=V1,V2,...``; unscoped: every method)."""
    out: dict[str, Knob] = {}
    for spec in specs:
        head, eq, values = spec.partition("=")
        scope, colon, path = head.rpartition(":") if ":" in head else ("", "", head)
        if not eq or not path or not values:
            raise FrontierError(f"--knob '{spec}': expected [METHOD:]PATH=V1,V2,...")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise FrontierError(f"--knob '{spec}': values must be numbers") from None
        if not parsed:
            raise FrontierError(f"--knob '{spec}': no values")
        if scope and scope not in methods:
            raise FrontierError(
                f"--knob '{spec}': method '{scope}' is not among --methods {','.join(methods)}"
            )
        for m in [scope] if scope else methods:
            out[m] = Knob(tuple(path.split(".")), parsed)
    missing = [m for m in methods if m not in out]
    if missing:
        raise FrontierError(f"--knob: no knob for {', '.join(missing)} (give METHOD:PATH=...)")
    return out


def check_methods(methods: list[str]) -> None:
    if len(set(methods)) != len(methods):
        raise FrontierError(f"--methods lists a method twice: {','.join(methods)}")
    for m in methods:
        try:
            METHODS.get(m)
        except RegistryError as exc:
            raise FrontierError(f"--methods: {exc}") from None
    if BASELINE not in methods or len(methods) < 2:
        raise FrontierError(
            f"--methods: needs {BASELINE} (the baseline) and at least one other of "
            f"{', '.join(METHODS.names())}"
        )


def check_seeds(seeds: list[int], target_seeds: list[int]) -> None:
    """Replicates that mean something: at least 2 seeds and 2 target seeds, none twice."""
    for name, values in (("--seeds", seeds), ("--target-seeds", target_seeds)):
        if len(set(values)) != len(values):
            raise FrontierError(f"{name} lists a seed twice: {values}")
        if len(values) < 2:
            raise FrontierError(
                f"{name}: at least 2 are needed for an interval over replicates, found {values}"
            )


def point_recipe(base: Recipe, point: Point, target_weights: Path | None) -> Recipe:
    """``base`` as ``point``'s method with its knob value and seed, from the target's weights."""
    data = base.model_dump(mode="json")
    data["name"] = f"{base.name}_{point.name}"
    data["seed"] = point.seed
    if target_weights is not None:
        data["train"]["checkpoint"] = str(target_weights)
    data["patrol"] = deep_merge(data["patrol"], METHODS.get(point.method).patrol)
    node: Any = data["patrol"]
    for key in point.knob.path[:-1]:
        if not isinstance(node, dict) or key not in node:
            raise FrontierError(f"--knob {point.knob.label}: patrol has no '{key}'")
        node = node[key] if node[key] is not None else {}
    last = point.knob.path[-1]
    if not isinstance(node, dict) or last not in node:
        raise FrontierError(f"--knob {point.knob.label}: patrol has no '{last}'")
    node[last] = _knob_value(node[last], point)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FrontierError(
            f"--knob {point.knob.label}={point.value:g} ({point.method}): {where}: {first['msg']}"
        ) from None


def _knob_value(old: Any, point: Point) -> Any:
    """The setting's new value: the knob's value, as an integer where the setting is one
    (or unset and the value whole), and for a list of numbers the list scaled by it
    (``lipschitz.alphas=0.5,1,2`` halves and doubles the recipe's per-block weights)."""
    v = point.value
    if isinstance(old, list):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in old):
            raise FrontierError(f"--knob {point.knob.label}: not a list of numbers to scale")
        return [x * v for x in old]
    integral = isinstance(old, int) and not isinstance(old, bool)
    if integral and v != int(v):
        raise FrontierError(
            f"--knob {point.knob.label}={v:g}: patrol.{point.knob.label} is an integer"
        )
    if integral or (old is None and float(v).is_integer()):
        return int(v)
    return v


def plan_points(
    base: Recipe,
    methods: list[str],
    knobs: dict[str, Knob],
    seeds: list[int],
    target_seeds: list[int],
) -> list[Point]:
    """Every point, target-major then seed-major (a partial run has every method at a seed);
    each point's recipe is built once here so a bad knob fails before any work."""
    points = [
        Point(m, knobs[m], v, s, t)
        for t in target_seeds
        for s in seeds
        for m in methods
        for v in knobs[m].values
    ]
    for p in {(p.method, p.value): p for p in points}.values():
        point_recipe(base, p, None)
    return points
