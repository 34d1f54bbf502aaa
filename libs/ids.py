"""Ids that must be unique, not secret: a random prefix per process and a counter.

The hot paths make one per request (request ids) and one per event (event ids); a counter costs a
fraction of an os.urandom call, or even of a PRNG draw. The prefix comes from the OS once per id
source, so two processes share one with negligible odds (2^-74 or less for the formats below).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

_os_random = random.SystemRandom()


def counter_ids(prefix: str) -> Callable[[], str]:
    """A function returning `prefix` + 12 hex digits of a counter (starting at a random value)."""
    counter = itertools.count(_os_random.getrandbits(32))

    def next_id() -> str:
        return f"{prefix}{next(counter) & 0xFFFFFFFFFFFF:012x}"

    return next_id


def hex32_ids() -> Callable[[], str]:
    """32 hex characters: an 80-bit random prefix and the counter."""
    return counter_ids(f"{_os_random.getrandbits(80):020x}")


def uuid4_shaped_ids() -> Callable[[], str]:
    """Strings shaped as version 4 (variant 1) UUIDs: 74 random bits, then the counter as the last group."""
    r = _os_random.getrandbits
    return counter_ids(f"{r(32):08x}-{r(16):04x}-4{r(12):03x}-{8 | r(2):x}{r(12):03x}-")
