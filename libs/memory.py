"""Handing memory the process no longer uses back to the kernel, so a laptop's `analytics run` stays small.

Freed memory stays in the C allocator's heap until it is trimmed: start-up (the country database's
conversion, schemas, migrations) and bursts of load free tens of MB that glibc keeps for reuse. Pages of
libraries read once (at start-up) stay resident until the kernel needs the room or is told to drop them.
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


_MADV_PAGEOUT = 21  # Linux 5.4+


def release_library_pages(fragments: tuple[str, ...]) -> int:
    """Hand the read-only pages of the shared libraries whose path contains one of `fragments` back to
    the kernel (MADV_PAGEOUT); returns the bytes advised. Only read-only mappings are advised, and
    MADV_PAGEOUT never discards data (a written page is swapped or kept, not dropped), so nothing the
    process holds changes: a page used again is read back from its file. A page another process maps
    too stays."""
    libc = _libc()
    if libc is None:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if (len(fields) > 5 and fields[1] in ("r-xp", "r--p") and ".so" in fields[5]
                    and any(fragment in fields[5] for fragment in fragments)):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if libc.madvise(start, end - start, _MADV_PAGEOUT) == 0:
                    advised += end - start
    return advised
