"""keep_signal_stack gives the thread back its alternate signal stack (issue 24's crash)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from patrol_compress.signal_stack import (
    _sigaltstack,
    _StackT,
    current_signal_stack,
    keep_signal_stack,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack: Linux")


def test_a_stack_installed_inside_the_block_is_replaced_by_the_one_before() -> None:
    """What OpenVINO's CPU plugin does on creation, undone on exit even if the block raises."""
    before, saved = current_signal_stack(), _StackT()
    assert before is not None and _sigaltstack(None, saved)
    buffer = ctypes.create_string_buffer(64 * 1024)
    other = _StackT(ctypes.cast(buffer, ctypes.c_void_p), 0, len(buffer))
    try:
        with pytest.raises(RuntimeError, match="inside"), keep_signal_stack():
            assert _sigaltstack(other, None)
            inside = current_signal_stack()
            assert inside is not None and inside.address == ctypes.addressof(buffer)
            raise RuntimeError("inside")
        assert current_signal_stack() == before
    finally:
        _sigaltstack(saved, None)  # never leave the thread on the buffer freed below
