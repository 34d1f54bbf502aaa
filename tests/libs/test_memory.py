"""libs/memory.py: the C heap's free pages go back to the kernel."""

from __future__ import annotations

import sys

import pytest

from libs.memory import release_free_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_heap_pages_go_back_to_the_kernel() -> None:
    def anonymous_kb() -> int:
        with open("/proc/self/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Anonymous:"))

    # Blocks of 2 KB come from glibc's heap (Python's own allocator takes 512 bytes at most); one block
    # allocated after them pins the heap's top, so free() alone cannot shrink it.
    blocks = [bytearray(2_000) for _ in range(20_000)]  # about 40 MB
    pin = bytearray(2_000)
    held = anonymous_kb()
    del blocks
    assert release_free_heap() is True
    assert anonymous_kb() < held - 20_000  # most of the 40 MB is given back
    assert len(pin) == 2_000
