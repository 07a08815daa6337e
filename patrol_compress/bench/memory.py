"""Peak resident memory of one benchmark block, above the idle process.

Method (Linux): before loading a runtime session, write ``5`` to
``/proc/self/clear_refs``, which resets the kernel's peak-RSS counter
(``VmHWM``) to the current RSS; read ``VmRSS`` as the baseline; after the timed
runs read ``VmHWM``. The difference is the peak memory the session, its
weights, arena and buffers added. Limits: RSS counts pages touched, not
allocated; shared libraries mapped for the first time count once; memory freed
by an earlier block but kept by the allocator is reused without counting.

Where ``clear_refs`` cannot be written the counter cannot be reset, so the
peak of an earlier, bigger block can mask a later one (method
``"VmHWM-not-reset"``). Off Linux, ``resource.getrusage`` gives only a
lifetime peak (method ``"ru_maxrss"``), with the same limitation; without
either, memory is reported as ``None``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kb() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


class PeakRss:
    """Measure peak RSS growth between :meth:`start` and :meth:`peak_mb`."""

    def __init__(self) -> None:
        self.method = "none"
        self._baseline_kb: int | None = None

    def start(self) -> None:
        if _status_kb("VmRSS") is not None:
            try:
                _CLEAR_REFS.write_text("5")
                self.method = "VmHWM-reset"
            except OSError:
                self.method = "VmHWM-not-reset"
            self._baseline_kb = _status_kb("VmRSS")
        else:
            self._baseline_kb = _maxrss_kb()
            self.method = "ru_maxrss" if self._baseline_kb is not None else "none"

    def peak_mb(self) -> float | None:
        if self._baseline_kb is None:
            return None
        peak = _status_kb("VmHWM") if self.method.startswith("VmHWM") else _maxrss_kb()
        if peak is None:
            return None
        return round(max(0, peak - self._baseline_kb) / 1024.0, 2)
