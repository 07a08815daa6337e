"""Privacy reports: attack.json files -> one self-contained HTML page and markdown.

Reads only JSON and images (never torch), so a report can be made on any
machine that holds the attack results.
"""

from __future__ import annotations

from patrol_compress.report.build import ReportFiles, build_report
from patrol_compress.report.collect import Point, load_points

__all__ = ["Point", "ReportFiles", "build_report", "load_points"]
