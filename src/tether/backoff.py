"""Reconnect delays: exponential backoff with full jitter, as a pure function.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") draws each
delay uniformly from ``[0, min(cap, base * factor**attempt)]``. Compared with
"equal jitter" or a fixed ±x %, it spreads a fleet that lost its server at the
same instant over the whole window, which is what prevents the thundering herd.
"""

from __future__ import annotations

import math
import random


def backoff_ceiling(attempt: int, *, base: float, factor: float, cap: float) -> float:
    """The upper bound of the delay before retry number ``attempt`` (0-based)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if base <= 0 or cap <= 0:
        return 0.0
    if factor <= 1.0:
        return min(cap, base)
    # Compare in log space so huge attempt counts cannot overflow a float.
    if attempt * math.log(factor) >= math.log(cap / base):
        return cap
    return min(cap, base * factor**attempt)


def backoff_delay(
    attempt: int, *, base: float, factor: float, cap: float, rand: float | None = None
) -> float:
    """A full-jitter delay for retry number ``attempt`` (0-based), in seconds.

    ``rand`` is a number in ``[0, 1)``; pass it to make the result deterministic,
    leave it out to draw one.
    """
    r = random.random() if rand is None else rand
    if not 0.0 <= r < 1.0:
        raise ValueError("rand must be in [0, 1)")
    return r * backoff_ceiling(attempt, base=base, factor=factor, cap=cap)
