from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.backoff import Jitter, backoff_ceiling, backoff_delay
from tether.config import ClientConfig, OutboxPolicy

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


jitters = st.sampled_from([Jitter.PROPORTIONAL, Jitter.ABSOLUTE])


@given(
    attempt=attempts,
    base=bases,
    factor=factors,
    cap=caps,
    r=rands,
    jitter=jitters,
    ratio=st.floats(min_value=0, max_value=1),
    seconds=st.floats(min_value=0, max_value=100),
)
def test_narrow_jitter_stays_around_the_ceiling_and_never_passes_the_cap(
    attempt: int,
    base: float,
    factor: float,
    cap: float,
    r: float,
    jitter: Jitter,
    ratio: float,
    seconds: float,
) -> None:
    ceiling = backoff_ceiling(attempt, base=base, factor=factor, cap=cap)
    delay = backoff_delay(
        attempt,
        base=base,
        factor=factor,
        cap=cap,
        jitter=jitter,
        ratio=ratio,
        seconds=seconds,
        rand=r,
    )
    spread = ceiling * ratio if jitter is Jitter.PROPORTIONAL else seconds
    assert 0 <= delay <= cap
    assert ceiling - spread - 1e-9 <= delay <= ceiling + spread + 1e-9


def test_the_seeds_schedules_come_out_as_written() -> None:
    # Plan 001: 1 -> 16 s, ±30 %. Plan 004: 2 s x 1.5, ±0.5 s, cap 60 s.
    def plan_001(n: int, r: float) -> float:
        return backoff_delay(
            n, base=1, factor=2, cap=16, jitter=Jitter.PROPORTIONAL, ratio=0.3, rand=r
        )

    def plan_004(n: int, r: float) -> float:
        return backoff_delay(
            n, base=2, factor=1.5, cap=60, jitter=Jitter.ABSOLUTE, seconds=0.5, rand=r
        )

    assert [plan_001(n, 0.0) for n in range(6)] == pytest.approx([0.7, 1.4, 2.8, 5.6, 11.2, 11.2])
    assert [plan_001(n, 0.5) for n in range(6)] == pytest.approx([1, 2, 4, 8, 16, 16])
    assert plan_001(4, 0.999) == 16  # +30 % of 16 would pass the cap: the cap holds
    assert [plan_004(n, 0.0) for n in range(3)] == pytest.approx([1.5, 2.5, 4.0])
    assert [plan_004(n, 0.5) for n in range(3)] == pytest.approx([2, 3, 4.5])
    assert plan_004(20, 0.999) == 60


def test_a_jitter_amount_no_mode_can_use_is_refused_where_it_is_configured() -> None:
    with pytest.raises(ValueError, match="jitter_ratio"):
        ClientConfig(jitter_ratio=1.5)
    with pytest.raises(ValueError, match="jitter_seconds"):
        ClientConfig(jitter_seconds=-1)
    with pytest.raises(ValueError, match="jitter_seconds"):
        backoff_delay(0, base=1, factor=2, cap=30, jitter=Jitter.ABSOLUTE, seconds=math.nan)
    assert ClientConfig(jitter=Jitter("absolute")).jitter is Jitter.ABSOLUTE


def test_a_jitter_mode_given_as_a_string_is_that_mode() -> None:
    # Found by the golden vectors: "proportional" as a plain str compared unequal to every
    # member, and backoff fell through to the absolute spread without a word.
    config = ClientConfig(jitter="proportional", jitter_ratio=0.3)  # type: ignore[arg-type]
    assert config.jitter is Jitter.PROPORTIONAL
    assert ClientConfig(outbox_policy="drop-oldest").outbox_policy is OutboxPolicy.DROP_OLDEST  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter must be one of 'full', 'proportional'"):
        ClientConfig(jitter="wild")  # type: ignore[arg-type]
