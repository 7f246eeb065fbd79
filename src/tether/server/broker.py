"""Where topics live: the broker contract the hub depends on, and the in-memory broker.

The hub never touches storage itself. It talks to a :class:`Broker`, which
allocates offsets, keeps each topic's bounded history and epoch, answers resumes
(:meth:`Broker.replay`), and hands every published entry to the hub's
:class:`LiveFeed` for fan-out. Two implement it:

* :class:`MemoryBroker` (this module), the embedded default of a single node:
  its feed is exact (every entry, in order, at once);
* :class:`~tether.server.redis_broker.RedisBroker`, shared by many nodes: its
  feed is Redis pub/sub, which is at-most-once, so the hub checks every entry's
  offset and repairs a skip from history (``replay``) before delivering on.

In the memory broker topics are created on first use with a fresh random epoch,
so a restarted hub never mistakes its new offsets for the old ones. The hub tells
the broker which topics are in use (``retain`` on a topic's first local
subscriber, ``release`` on its last); past ``max_topics`` the least recently used
idle topic is evicted, and a later resume of it is reported as a gap. Idle topics
sit in their own LRU, so creating a topic costs O(1) however many are held. When
every topic is in use a new one is refused (:class:`TooManyTopics`): evicting a
topic with subscribers would silently restart its offsets under their feet.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, Protocol

import msgspec

from ..errors import ErrorCode, TetherError
from ..history import Entry, Replay, TopicLog
from ..protocol import Cursor

#: :meth:`Broker.claim`'s answer when another node is still handling that message id.
IN_PROGRESS: Final = b""


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


class BrokerUnavailable(TetherError):
    """The shared broker cannot be reached: the operation did not happen (retry later)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class LiveFeed(Protocol):
    """What a broker hands published entries to (the hub's fan-out)."""

    def live(self, topic: str, entries: Sequence[Entry]) -> None:
        """``entries`` of ``topic`` were just published, in offset order.

        A shared broker's feed may skip entries or repeat them; the receiver checks
        offsets and repairs a skip with :meth:`Broker.replay`.
        """

    def feed_reset(self) -> None:
        """The feed may have lost entries (e.g. it reconnected): check every retained topic."""


class Broker(Protocol):
    """Topics, offsets, epochs, bounded history, live feed and cross-node dedup."""

    @property
    def ready(self) -> bool:
        """False while the broker's storage is unreachable (``/readyz`` reports it)."""

    @property
    def shared(self) -> bool:
        """True when other hub nodes share this history and dedup (then the hub asks
        :meth:`claim` about message ids it has not seen itself)."""

    def __len__(self) -> int:
        """Topics this node holds or follows (a gauge)."""

    def bind(self, feed: LiveFeed) -> None:
        """Send every entry of a retained topic to ``feed`` from now on."""

    async def start(self) -> None:
        """Connect (idempotent). A broker that cannot connect yet keeps trying."""

    async def aclose(self) -> None:
        """Disconnect and stop background work."""

    async def publish(
        self, topic: str, data: msgspec.Raw, *, now: float, floor: Cursor | None = None
    ) -> Entry:
        """Append ``data`` to ``topic`` with the next offset, and announce it on the feed.

        ``floor`` is the furthest position of the topic this node has seen; if the
        topic's head in that epoch is below it, its history was rolled back and a new
        epoch starts first (never a duplicate offset). Raises :class:`TooManyTopics`
        or :class:`BrokerUnavailable`; either way nothing was published.
        """

    async def replay(
        self, topic: str, resume: Cursor | None, *, now: float, rewind: int = 0
    ) -> Replay:
        """The topic's epoch and head, and what follows ``resume`` (see :class:`Replay`);
        without ``resume``, the last ``rewind`` messages history holds.

        Raises :class:`TooManyTopics` or :class:`BrokerUnavailable`.
        """

    def retain(self, topic: str) -> None:
        """``topic`` got its first local subscriber: feed it, and never evict it."""

    def release(self, topic: str) -> None:
        """``topic`` lost its last local subscriber."""

    def release_all(self) -> None:
        """A new hub took this broker over: none of its topics has a local subscriber yet."""

    async def claim(self, key: str, *, charge: str, now: float) -> bytes | None:
        """Cross-node dedup: ``None`` if ``key`` is new (now claimed by this node), the
        reply recorded for it, or :data:`IN_PROGRESS` while another node handles it.

        ``charge`` names whose bounded share of ids the key counts against.
        Raises :class:`BrokerUnavailable`.
        """

    async def settle(self, key: str, reply: bytes | None) -> None:
        """Record the reply of a claimed ``key``; ``None`` drops the claim (the run was
        cut short, so a retry runs it afresh)."""


class MemoryBroker:
    """The embedded single-node broker: topics in this process, an exact live feed."""

    __slots__ = (
        "_feed",
        "_idle",
        "_retained",
        "_topics",
        "history_size",
        "history_ttl",
        "max_topics",
    )

    def __init__(self, *, history_size: int, history_ttl: float, max_topics: int) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_topics = max_topics
        self._topics: dict[str, TopicLog] = {}
        #: Topics without local subscribers, least recently used first (the eviction order).
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._retained: set[str] = set()
        self._feed: LiveFeed | None = None

    @property
    def ready(self) -> bool:
        return True

    @property
    def shared(self) -> bool:
        return False

    def bind(self, feed: LiveFeed) -> None:
        self._feed = feed

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

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
        if topic not in self._retained:  # retained first, then created by the join's replay
            self._idle[topic] = None
        return log

    def retain(self, topic: str) -> None:
        """``topic`` got its first local subscriber: never evict it while it has one."""
        self._retained.add(topic)
        self._idle.pop(topic, None)

    def release(self, topic: str) -> None:
        """``topic`` lost its last local subscriber: it may be evicted, most recent last."""
        self._retained.discard(topic)
        if topic in self._topics:
            self._idle[topic] = None
            self._idle.move_to_end(topic)

    def release_all(self) -> None:
        """A new hub took this broker over: none of its topics has a local subscriber yet."""
        self._retained.clear()
        for topic in self._topics:
            self._idle[topic] = None

    def publish_now(self, topic: str, data: msgspec.Raw, *, now: float) -> Entry:
        """:meth:`publish`, synchronously (the memory broker never waits)."""
        entry = self.log(topic).append(data, now=now)
        if self._feed is not None and topic in self._retained:
            self._feed.live(topic, (entry,))
        return entry

    async def publish(
        self, topic: str, data: msgspec.Raw, *, now: float, floor: Cursor | None = None
    ) -> Entry:
        # ``floor`` is moot: this process is the only writer, so history can't roll back.
        return self.publish_now(topic, data, now=now)

    def replay_now(
        self, topic: str, resume: Cursor | None, *, now: float, rewind: int = 0
    ) -> Replay:
        """:meth:`replay`, synchronously."""
        return self.log(topic).replay(resume, now=now, rewind=rewind)

    async def replay(
        self, topic: str, resume: Cursor | None, *, now: float, rewind: int = 0
    ) -> Replay:
        return self.replay_now(topic, resume, now=now, rewind=rewind)

    async def claim(self, key: str, *, charge: str, now: float) -> bytes | None:
        # Nothing to share: the hub's own dedup window is the whole truth.
        return None

    async def settle(self, key: str, reply: bytes | None) -> None:
        return None
