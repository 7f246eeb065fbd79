"""The in-memory broker: every topic's log, bounded in count of topics.

Single-node hubs keep history here. Topics are created on first use with a
fresh random epoch, so a restarted hub never mistakes its new offsets for the
old ones. The hub tells the broker which topics are in use (``retain`` on a
topic's first local subscriber, ``release`` on its last); past ``max_topics``
the least recently used idle topic is evicted, and a later resume of it is
reported as a gap. Idle topics sit in their own LRU, so creating a topic costs
O(1) however many are held. When every topic is in use a new one is refused
(:class:`TooManyTopics`): evicting a topic with subscribers would silently
restart its offsets under their feet.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

import msgspec

from ..errors import ErrorCode, TetherError
from ..history import Entry, Replay, TopicLog
from ..protocol import Cursor


def new_epoch() -> str:
    """A fresh epoch: 48 random bits, so a restarted hub never reuses one."""
    return secrets.token_hex(6)


class TooManyTopics(TetherError):
    """Every one of ``max_topics`` topics is in use: a new topic can't be created."""

    code = ErrorCode.TOO_MANY_TOPICS

    def __init__(self, max_topics: int) -> None:
        self.message = (
            f"the hub holds its limit of {max_topics} topics and every one has subscribers; "
            "no new topic can be created until one is released (max_topics)"
        )
        super().__init__(self.message)


class MemoryBroker:
    __slots__ = ("_idle", "_topics", "history_size", "history_ttl", "max_topics")

    def __init__(self, *, history_size: int, history_ttl: float, max_topics: int) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_topics = max_topics
        self._topics: dict[str, TopicLog] = {}
        #: Topics without local subscribers, least recently used first (the eviction order).
        self._idle: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    def __repr__(self) -> str:
        return (
            f"<MemoryBroker topics={len(self._topics)} idle={len(self._idle)} "
            f"history={self.history_size}>"
        )

    def log(self, topic: str) -> TopicLog:
        """The topic's log, created on first use; marks it recently used.

        Raises :class:`TooManyTopics` when it would have to be created and every
        topic held is in use.
        """
        log = self._topics.get(topic)
        if log is not None:
            if topic in self._idle:
                self._idle.move_to_end(topic)
            return log
        if len(self._topics) >= self.max_topics:
            if not self._idle:
                raise TooManyTopics(self.max_topics)
            evicted, _ = self._idle.popitem(last=False)
            del self._topics[evicted]
        log = self._topics[topic] = TopicLog(
            topic, epoch=new_epoch(), max_size=self.history_size, max_age=self.history_ttl
        )
        self._idle[topic] = None
        return log

    def retain(self, topic: str) -> None:
        """``topic`` got its first local subscriber: never evict it while it has one."""
        self._idle.pop(topic, None)

    def release(self, topic: str) -> None:
        """``topic`` lost its last local subscriber: it may be evicted, most recent last."""
        if topic in self._topics:
            self._idle[topic] = None
            self._idle.move_to_end(topic)

    def release_all(self) -> None:
        """A new hub took this broker over: none of its topics has a local subscriber yet."""
        for topic in self._topics:
            self._idle[topic] = None

    def publish(self, topic: str, data: msgspec.Raw, *, now: float) -> Entry:
        return self.log(topic).append(data, now=now)

    def replay(self, topic: str, resume: Cursor | None, *, now: float) -> Replay:
        return self.log(topic).replay(resume, now=now)
