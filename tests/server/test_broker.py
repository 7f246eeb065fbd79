"""The in-memory broker's topic table: LRU eviction of idle topics only, in O(1)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import msgspec
import pytest

from tether.server.broker import MemoryBroker, TooManyTopics


def broker(max_topics: int) -> MemoryBroker:
    return MemoryBroker(history_size=10, history_ttl=60.0, max_topics=max_topics)


def test_idle_topics_are_evicted_least_recently_used_first() -> None:
    b = broker(3)
    for name in ("a", "b", "c"):
        b.log(name)
    b.log("a")  # touched: now the most recent
    b.log("d")  # evicts b, the least recently used
    assert sorted(b._topics) == ["a", "c", "d"]


def test_retained_topics_are_never_evicted_and_released_ones_go_last() -> None:
    b = broker(3)
    for name in ("a", "b", "c"):
        b.log(name)
    b.retain("a")
    b.log("d")  # a is busy: b goes
    b.release("a")  # a is idle again, as the most recently used
    b.log("e")  # c goes, then d would, a last
    assert sorted(b._topics) == ["a", "d", "e"]


def test_a_new_topic_is_refused_when_every_topic_is_in_use() -> None:
    # Issue 14.8: it used to be created and evicted at once, so every publish to it got
    # offset 1 under a fresh epoch. Now it is refused and nothing changes.
    b = broker(2)
    for name in ("a", "b"):
        b.log(name)
        b.retain(name)
    first = b.publish_now("a", msgspec.Raw(b"1"), now=0.0)
    with pytest.raises(TooManyTopics, match="max_topics") as info:
        b.publish_now("new", msgspec.Raw(b"1"), now=0.0)
    assert info.value.code == "too_many_topics"
    assert sorted(b._topics) == ["a", "b"]
    assert b.publish_now("a", msgspec.Raw(b"2"), now=0.0).offset == first.offset + 1


def test_release_all_hands_every_topic_to_a_new_hub() -> None:
    b = broker(2)
    for name in ("a", "b"):
        b.log(name)
        b.retain(name)
    b.release_all()
    b.log("c")
    assert sorted(b._topics) == ["b", "c"]


def count_calls(fn: Any) -> int:
    """Python and C function calls made while running ``fn``: a clock-free measure of work."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_creating_a_topic_costs_the_same_with_a_full_table_of_busy_topics() -> None:
    # Issue 13.3: eviction walked the whole table from the start, so with 100,000 busy
    # topics every new topic cost 100,000 steps and a few clients stalled the loop.
    size = 100_000
    full = broker(size)
    for n in range(size - 1):
        full.log(f"busy.{n}")
        full.retain(f"busy.{n}")
    full.log("idle.0")
    empty = broker(size)

    def churn(b: MemoryBroker) -> None:
        for n in range(1, 101):
            b.log(f"fresh.{n}")  # evicts the previous idle topic when full

    cost_full = count_calls(lambda: churn(full))
    cost_empty = count_calls(lambda: churn(empty))
    assert len(full) == size
    # A few extra calls per topic for the eviction itself, never a pass over the table.
    assert cost_full <= cost_empty + 5 * 100, (cost_full, cost_empty)
