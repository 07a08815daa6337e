"""Privacy frontiers as a product feature: ``patrol-compress frontier recipe.yaml``.

:func:`make_plan` checks what to measure (methods, knobs, seeds, targets);
:func:`run_frontier` builds, attacks and compares the points, resumably.
"""

from patrol_compress.frontier.compare import Record, compare, frontier, margin
from patrol_compress.frontier.methods import BASELINE, METHODS, Method, register_method
from patrol_compress.frontier.plan import FrontierError, Knob, Point, parse_knobs, point_recipe
from patrol_compress.frontier.run import FrontierPlan, make_plan, run_frontier

__all__ = [
    "BASELINE",
    "METHODS",
    "FrontierError",
    "FrontierPlan",
    "Knob",
    "Method",
    "Point",
    "Record",
    "compare",
    "frontier",
    "make_plan",
    "margin",
    "parse_knobs",
    "point_recipe",
    "register_method",
    "run_frontier",
]
