"""Handing memory the process no longer uses back to the kernel, so a laptop's `analytics run` stays small.

Freed memory stays in the C allocator's heap until it is trimmed: start-up (the country database's
conversion, schemas, migrations) and bursts of load free tens of MB that glibc keeps for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_heap() -> bool:
    """glibc's malloc_trim(0): the free pages of every malloc arena go back to the kernel (only free
    memory: what is allocated does not move). False where there is no glibc (musl, macOS)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
