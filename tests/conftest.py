"""Shared fixtures: tiny models and deterministic torch settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    """Seeded, and one intra-op thread: tiny models gain nothing from more, and when
    other jobs share the cores OpenMP's spin-waiting makes two threads several
    times slower than one."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
