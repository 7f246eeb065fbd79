"""The client's outbox: client -> hub messages waiting to be acknowledged.

Every ``send``/``publish`` goes through here, online or not. An item stays until
the hub acks (or nacks) it, so everything unacknowledged is re-sent, in order,
after a reconnect; the hub's dedup window makes those retries harmless.

Bounded by ``max_size`` with an explicit overflow policy, and by a per-item TTL.
Pure: the caller passes ``now`` and decides what to do with the items handed back
(fail their futures; nothing disappears without the caller hearing about it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import OutboxPolicy
from .errors import OutboxFull


@dataclass(slots=True)
class OutboxItem:
    id: str
    frame: bytes
    expires_at: float
    key: str | None = None
    #: Written on the current connection (reset on reconnect: everything unacked is re-sent).
    sent: bool = False
    #: Ever written, on any connection: the hub may have run it, so it can't be coalesced.
    written: bool = False
    #: Whatever the driver attaches to resolve the caller (an asyncio future).
    waiter: Any = field(default=None, repr=False)


class Outbox:
    __slots__ = ("_items", "max_size", "policy")

    def __init__(self, *, max_size: int, policy: OutboxPolicy) -> None:
        if max_size < 1:
            raise ValueError("outbox max_size must be >= 1")
        self.max_size = max_size
        self.policy = OutboxPolicy(policy)
        self._items: OrderedDict[str, OutboxItem] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[OutboxItem]:
        return iter(list(self._items.values()))

    def __repr__(self) -> str:
        return f"<Outbox {len(self._items)}/{self.max_size} policy={self.policy.value}>"

    def add(self, item: OutboxItem) -> list[OutboxItem]:
        """Queue ``item``; returns the items it displaced. Raises ``OutboxFull`` if refused."""
        if item.id in self._items:
            raise ValueError(f"duplicate outbox id {item.id!r}")
        displaced: list[OutboxItem] = []
        if self.policy is OutboxPolicy.COALESCE and item.key is not None:
            # Only an item never written can be replaced: once written the hub may have run
            # it (an ack lost with the connection), so dropping it would be a false report.
            for old in self._items.values():
                if old.key == item.key and not old.written:
                    displaced.append(old)
                    del self._items[old.id]
                    break
        if len(self._items) >= self.max_size:
            if self.policy is OutboxPolicy.DROP_OLDEST:
                _, oldest = self._items.popitem(last=False)
                displaced.append(oldest)
            else:
                raise OutboxFull(
                    f"outbox full ({self.max_size} messages, policy {self.policy.value})"
                )
        self._items[item.id] = item
        return displaced

    def get(self, id: str) -> OutboxItem | None:
        return self._items.get(id)

    def resolve(self, id: str) -> OutboxItem | None:
        """Remove and return the item the hub answered (ack or nack) for, if still queued."""
        return self._items.pop(id, None)

    def expire(self, now: float) -> list[OutboxItem]:
        """Remove and return every item whose TTL has passed."""
        dead = [item for item in self._items.values() if item.expires_at <= now]
        for item in dead:
            del self._items[item.id]
        return dead

    def unsent(self) -> list[OutboxItem]:
        """Items not yet written on the current connection, oldest first."""
        return [item for item in self._items.values() if not item.sent]

    def take_unsent(self) -> list[OutboxItem]:
        """:meth:`unsent`, marked as written: the caller writes them now, in this order."""
        items = self.unsent()
        for item in items:
            item.sent = item.written = True
        return items

    def remove_larger_than(self, limit: int) -> list[OutboxItem]:
        """Remove and return the items whose frame exceeds ``limit`` bytes (never sendable)."""
        big = [item for item in self._items.values() if len(item.frame) > limit]
        for item in big:
            del self._items[item.id]
        return big

    def mark_all_unsent(self) -> None:
        """After a reconnect every unacknowledged item must be written again."""
        for item in self._items.values():
            item.sent = False

    def clear(self) -> list[OutboxItem]:
        items = list(self._items.values())
        self._items.clear()
        return items

    def next_expiry(self) -> float | None:
        return min((item.expires_at for item in self._items.values()), default=None)
