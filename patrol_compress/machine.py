"""What this machine allows: the CPU cores this process may use, and thread counts against them.

Torch-free (``bench`` runs on edge devices). The CLI's ``--threads`` was
checked against the usable cores, but the same counts also come from recipes
(``patrol.budget.latency.threads``, ``attack.adaptive.threads``,
``train.num_workers``) and from API arguments (``api.bench(threads=...)``);
a recipe is portable, so its counts are checked where they are used, on the
machine that runs them. More threads than cores only oversubscribe them
(>= 1024 thrashed a machine, 20000 gave a raw libgomp error, 100000 a segfault).
"""

from __future__ import annotations

import os

from patrol_compress.errors import UsageError


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroups, containers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_thread_count(value: object, what: str, zero_means: str | None = None) -> None:
    """``value`` must be an int in 1..usable cores (0 too, where ``zero_means`` says what it
    stands for); else a :class:`UsageError` naming ``what`` (a flag or a recipe field)."""
    if value is None:
        return
    cores = usable_cores()
    low = 0 if zero_means else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= cores:
        zero = f" or 0 ({zero_means})" if zero_means else ""
        raise UsageError(
            f"{what} {value!r}: expected 1..{cores} (the CPU cores this process may use){zero}"
        )
