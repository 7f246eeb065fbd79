from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.backoff import backoff_ceiling, backoff_delay

bases = st.floats(min_value=0.001, max_value=60)
factors = st.floats(min_value=1.0, max_value=10)
caps = st.floats(min_value=0.001, max_value=3600)
attempts = st.integers(min_value=0, max_value=10_000)
rands = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(attempt=attempts, base=bases, factor=factors, cap=caps, r=rands)
def test_delay_within_zero_and_ceiling(
    attempt: int, base: float, factor: float, cap: float, r: float
) -> None:
    ceiling = backoff_ceiling(attempt, base=base, factor=factor, cap=cap)
    delay = backoff_delay(attempt, base=base, factor=factor, cap=cap, rand=r)
    assert 0 <= delay <= ceiling <= cap


@given(attempt=attempts, base=bases, factor=factors, cap=caps)
def test_ceiling_is_monotonic_and_capped(
    attempt: int, base: float, factor: float, cap: float
) -> None:
    a = backoff_ceiling(attempt, base=base, factor=factor, cap=cap)
    b = backoff_ceiling(attempt + 1, base=base, factor=factor, cap=cap)
    assert a <= b <= cap


def test_ceiling_grows_exponentially_then_caps() -> None:
    ceilings = [backoff_ceiling(n, base=1, factor=2, cap=30) for n in range(8)]
    assert ceilings == [1, 2, 4, 8, 16, 30, 30, 30]


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert backoff_ceiling(10**9, base=1, factor=10, cap=5) == 5


def test_full_jitter_spreads_over_the_whole_window() -> None:
    # Full jitter: uniform on [0, ceiling]. A fleet's delays must cover the window evenly,
    # not cluster near the ceiling (which is what causes a thundering herd).
    delays = [backoff_delay(5, base=1, factor=2, cap=30) for _ in range(5000)]
    assert min(delays) < 1.0
    assert max(delays) > 29.0
    assert 13.5 < statistics.mean(delays) < 16.5
    deciles = [sum(1 for d in delays if k * 3 <= d < (k + 1) * 3) for k in range(10)]
    assert all(350 < n < 650 for n in deciles), deciles


def test_rand_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, base=1, factor=2, cap=30, rand=1.0)
    with pytest.raises(ValueError):
        backoff_ceiling(-1, base=1, factor=2, cap=30)
