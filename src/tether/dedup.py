"""A bounded, expiring memory of idempotency ids (the hub's dedup window).

Holds at most ``max_entries`` keys, none older than ``ttl`` seconds; the oldest
go first. Pure: the caller passes ``now``. The value is whatever the caller
needs to answer a retry (the hub stores a future of the outcome).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class DedupWindow(Generic[K, V]):
    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, *, max_entries: int, ttl: float) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("dedup window needs max_entries >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<DedupWindow {len(self._entries)}/{self.max_entries} ttl={self.ttl}s>"

    def _expire(self, now: float) -> None:
        limit = now - self.ttl
        entries = self._entries
        while entries:
            key, (stamp, _) = next(iter(entries.items()))
            if stamp >= limit:
                break
            del entries[key]

    def get(self, key: K, *, now: float) -> V | None:
        """The value remembered for ``key``, or ``None`` if unseen or forgotten."""
        self._expire(now)
        hit = self._entries.get(key)
        return None if hit is None else hit[1]

    def put(self, key: K, value: V, *, now: float) -> None:
        """Remember ``key``; evicts expired entries, then the oldest if full."""
        self._expire(now)
        self._entries.pop(key, None)
        self._entries[key] = (now, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
