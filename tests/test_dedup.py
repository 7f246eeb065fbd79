from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.dedup import DedupWindow


def window(
    *, per_charge: int = 10, max_entries: int = 100, ttl: float = 100
) -> DedupWindow[str, int]:
    return DedupWindow(per_charge=per_charge, max_entries=max_entries, ttl=ttl)


def test_remembers_until_ttl() -> None:
    w = window(ttl=5)
    w.put("a", 1, charge="x", now=0)
    assert w.get("a", now=4.9) == 1
    assert w.get("a", now=5.1) is None
    assert w.charged("x") == 0


def test_a_charge_evicts_only_its_own_oldest() -> None:
    # Issue 14.1: junk ids from one client used to evict everyone's records.
    w = window(per_charge=3)
    w.put("victim", 0, charge="alice", now=0)
    for n in range(1000):
        w.put(f"junk{n}", n, charge="mallory", now=1)
    assert w.get("victim", now=2) == 0
    assert w.charged("mallory") == 3
    assert [w.get(f"junk{n}", now=2) for n in (996, 997, 998, 999)] == [None, 997, 998, 999]


def test_past_the_total_the_biggest_charge_pays() -> None:
    w = window(per_charge=50, max_entries=10)
    for n in range(5):
        w.put(f"small{n}", n, charge=f"honest{n}", now=0)
    for n in range(20):
        w.put(f"big{n}", n, charge="mallory", now=0)
    assert len(w) == 10
    assert all(w.get(f"small{n}", now=0) == n for n in range(5))
    assert w.charged("mallory") == 5


def test_reput_moves_a_key_to_its_new_charge() -> None:
    w = window()
    w.put("k", 1, charge="a", now=0)
    w.put("k", 2, charge="b", now=0)
    assert (w.get("k", now=0), w.charged("a"), w.charged("b")) == (2, 0, 1)


def test_invalid_bounds_rejected() -> None:
    with pytest.raises(ValueError):
        DedupWindow(per_charge=0, max_entries=1, ttl=1)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from("abcd")), max_size=200))
def test_bounds_hold_for_any_sequence(puts: list[tuple[int, str]]) -> None:
    w = window(per_charge=7, max_entries=12)
    for n, (key, charge) in enumerate(puts):
        w.put(str(key), n, charge=charge, now=n * 0.01)
        assert len(w) <= 12
        assert all(w.charged(c) <= 7 for c in "abcd")
        assert w.get(str(key), now=n * 0.01) == n  # the newest put is always kept
    assert sum(w.charged(c) for c in "abcd") == len(w)
