"""Reconnect delays: exponential backoff with jitter, as a pure function.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"), the default,
draws each delay uniformly from ``[0, min(cap, base * factor**attempt)]``. Compared
with "equal jitter" or a fixed ±x %, it spreads a fleet that lost its server at the
same instant over the whole window, which is what prevents the thundering herd.

Two narrower modes exist because teams ask for them (a delay that stays near the
exponential schedule is easier to reason about and to show in a countdown):
*proportional* (the ceiling ±``ratio``, Socket.IO's ``randomizationFactor``) and
*absolute* (the ceiling ±``seconds``). Both are clamped to ``[0, cap]``: the cap is
a promise to the user (the longest wait after the hub is back) that jitter must not
break.
"""

from __future__ import annotations

import enum
import math
import random


class Jitter(enum.StrEnum):
    """How a reconnect delay is drawn around the exponential ceiling."""

    #: Uniform on ``[0, ceiling]``: the widest spread, the default.
    FULL = "full"
    #: ``ceiling * (1 ± ratio)``, clamped to ``[0, cap]``.
    PROPORTIONAL = "proportional"
    #: ``ceiling ± seconds``, clamped to ``[0, cap]``.
    ABSOLUTE = "absolute"


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
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    jitter: Jitter = Jitter.FULL,
    ratio: float = 0.0,
    seconds: float = 0.0,
    rand: float | None = None,
) -> float:
    """The delay before retry number ``attempt`` (0-based), in seconds.

    ``jitter`` picks the spread (see :class:`Jitter`); ``ratio`` is the proportional
    mode's fraction (0-1), ``seconds`` the absolute mode's. ``rand`` is a number in
    ``[0, 1)``; pass it to make the result deterministic, leave it out to draw one.
    """
    r = random.random() if rand is None else rand
    if not 0.0 <= r < 1.0:
        raise ValueError("rand must be in [0, 1)")
    check_jitter(ratio=ratio, seconds=seconds)
    ceiling = backoff_ceiling(attempt, base=base, factor=factor, cap=cap)
    if jitter is Jitter.FULL:
        return r * ceiling
    spread = ceiling * ratio if jitter is Jitter.PROPORTIONAL else seconds
    return min(max(cap, 0.0), max(0.0, ceiling + spread * (2 * r - 1)))


def check_jitter(*, ratio: float, seconds: float) -> None:
    """Raise ``ValueError`` for a jitter amount no mode can use."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"jitter_ratio must be between 0 and 1, not {ratio}")
    if not 0.0 <= seconds < math.inf:
        raise ValueError(f"jitter_seconds must be 0 or more, not {seconds}")
