"""The in-memory broker: every topic's log, bounded in count of topics.

Single-node hubs keep history here. Topics are created on first use with a
fresh random epoch, so a restarted hub never mistakes its new offsets for the
old ones. Past ``max_topics``, idle topics (no local subscribers) are evicted
least-recently-used first; a later resume of one is reported as a gap.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from ..history import Entry, Replay, TopicLog
from ..protocol import Cursor


def new_epoch() -> str:
    """A fresh epoch: 48 random bits, so a restarted hub never reuses one."""
    return secrets.token_hex(6)


class MemoryBroker:
    __slots__ = ("_topics", "history_size", "history_ttl", "is_busy", "max_topics")

    def __init__(
        self,
        *,
        history_size: int,
        history_ttl: float,
        max_topics: int,
        is_busy: Callable[[str], bool] = lambda topic: False,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_topics = max_topics
        #: Whether a topic has local subscribers (never evicted); set by the hub using it.
        self.is_busy = is_busy
        self._topics: OrderedDict[str, TopicLog] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    def __repr__(self) -> str:
        return f"<MemoryBroker topics={len(self._topics)} history={self.history_size}>"

    def log(self, topic: str) -> TopicLog:
        """The topic's log, created on first use; marks it recently used."""
        log = self._topics.get(topic)
        if log is None:
            log = self._topics[topic] = TopicLog(
                topic, epoch=new_epoch(), max_size=self.history_size, max_age=self.history_ttl
            )
            self._evict()
        else:
            self._topics.move_to_end(topic)
        return log

    def _evict(self) -> None:
        excess = len(self._topics) - self.max_topics
        if excess <= 0:
            return
        for name in list(self._topics):
            if excess <= 0:
                break
            if not self.is_busy(name):
                del self._topics[name]
                excess -= 1

    def publish(self, topic: str, data: msgspec.Raw, *, now: float) -> Entry:
        return self.log(topic).append(data, now=now)

    def replay(self, topic: str, resume: Cursor | None, *, now: float) -> Replay:
        return self.log(topic).replay(resume, now=now)
