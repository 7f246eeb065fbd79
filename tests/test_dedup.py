from __future__ import annotations

import pytest

from tether.dedup import DedupWindow


def test_remembers_until_ttl() -> None:
    window: DedupWindow[str, int] = DedupWindow(max_entries=10, ttl=5)
    window.put("a", 1, now=0)
    assert window.get("a", now=4.9) == 1
    assert window.get("a", now=5.1) is None


def test_bounded_by_entries_oldest_first() -> None:
    window: DedupWindow[str, int] = DedupWindow(max_entries=3, ttl=100)
    for i, key in enumerate("abcd"):
        window.put(key, i, now=i)
    assert len(window) == 3
    assert window.get("a", now=4) is None
    assert window.get("d", now=4) == 3


def test_invalid_bounds_rejected() -> None:
    with pytest.raises(ValueError):
        DedupWindow(max_entries=0, ttl=1)
