"""A bounded, expiring memory of idempotency ids (the hub's dedup window).

Pure: the caller passes ``now``. The value is whatever the caller needs to answer
a retry (the hub stores a future of the outcome).

Every entry is *charged* to someone: the identity that sent it, or for anonymous
clients the address it came from. Each charge holds at most ``per_charge``
entries and evicts only its own oldest, so no client can flush another's records
by sending junk ids: the attack that one global LRU allowed (one anonymous client
with 10,000 junk ids erased every record, and a legitimate retry ran its handler
twice). All charges together hold at most ``max_entries``; past that the charge
holding the most loses its oldest entry first, so a crowd of small honest charges
outlasts a few big ones. Nothing is kept longer than ``ttl`` seconds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class DedupWindow(Generic[K, V]):
    __slots__ = (
        "_by_charge",
        "_entries",
        "_heap",
        "_tick",
        "max_entries",
        "per_charge",
        "ttl",
    )

    def __init__(self, *, per_charge: int, max_entries: int, ttl: float) -> None:
        if per_charge < 1 or max_entries < 1 or ttl <= 0:
            raise ValueError("dedup window needs per_charge >= 1, max_entries >= 1 and ttl > 0")
        self.per_charge = per_charge
        self.max_entries = max_entries
        self.ttl = ttl
        #: key -> (stored at, value, charge), oldest first (expiry order).
        self._entries: OrderedDict[K, tuple[float, V, str]] = OrderedDict()
        #: charge -> its keys, oldest first.
        self._by_charge: dict[str, OrderedDict[K, None]] = {}
        #: (-size, tiebreak, charge) pushed whenever a charge's size changes: the biggest
        #: charge is on top once stale sizes are skipped (a lazily cleaned max-heap).
        self._heap: list[tuple[int, int, str]] = []
        self._tick = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"<DedupWindow {len(self._entries)}/{self.max_entries} "
            f"charges={len(self._by_charge)} per_charge={self.per_charge} ttl={self.ttl}s>"
        )

    def charged(self, charge: str) -> int:
        """How many entries ``charge`` holds."""
        keys = self._by_charge.get(charge)
        return 0 if keys is None else len(keys)

    def get(self, key: K, *, now: float) -> V | None:
        """The value remembered for ``key``, or ``None`` if unseen or forgotten."""
        self._expire(now)
        hit = self._entries.get(key)
        return None if hit is None else hit[1]

    def put(self, key: K, value: V, *, charge: str, now: float) -> None:
        """Remember ``key`` on ``charge``'s account; evicts expired entries, then the
        charge's own oldest past ``per_charge``, then the biggest charge's past
        ``max_entries``."""
        self._expire(now)
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (now, value, charge)
        keys = self._by_charge.get(charge)
        if keys is None:
            keys = self._by_charge[charge] = OrderedDict()
        keys[key] = None
        if len(keys) > self.per_charge:
            self._remove(next(iter(keys)))
        heapq.heappush(self._heap, (-len(keys), next(self._tick), charge))
        while len(self._entries) > self.max_entries:
            biggest = self._biggest_charge()
            self._remove(next(iter(self._by_charge[biggest])))
        if len(self._heap) > 4 * len(self._by_charge) + 64:
            self._rebuild_heap()

    def _remove(self, key: K) -> None:
        _, _, charge = self._entries.pop(key)
        keys = self._by_charge[charge]
        del keys[key]
        if keys:
            heapq.heappush(self._heap, (-len(keys), next(self._tick), charge))
        else:
            del self._by_charge[charge]

    def _expire(self, now: float) -> None:
        limit = now - self.ttl
        entries = self._entries
        while entries:
            key, (stamp, _, _) = next(iter(entries.items()))
            if stamp >= limit:
                break
            self._remove(key)

    def _biggest_charge(self) -> str:
        heap = self._heap
        while heap:
            size, _, charge = heap[0]
            if self.charged(charge) == -size:
                return charge
            heapq.heappop(heap)  # stale: that charge has shrunk (or gone) since
        self._rebuild_heap()
        return self._heap[0][2]

    def _rebuild_heap(self) -> None:
        self._heap = [(-len(keys), next(self._tick), c) for c, keys in self._by_charge.items()]
        heapq.heapify(self._heap)
