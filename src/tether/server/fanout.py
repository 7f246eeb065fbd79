"""Topic fan-out on one node: the resume seam, in-order delivery and feed repair.

Sans-I/O: no sockets, no event loop, no clock. The hub feeds it what happens
(a subscriber starts joining, its replay arrived, the broker's feed brought
entries, a repair read came back) and it writes frames to links and asks for
what it needs through two callbacks: ``schedule_flush`` (run :meth:`flush`
soon: in this loop turn, or under load after :func:`next_flush_delay`) and
``request_repair`` (read the topic's history after a cursor and hand it to
:meth:`repaired`).

Theory of operation
-------------------
For every topic with local subscribers the node keeps a *cursor*: the last
(epoch, offset) it handed to them. An entry from the feed is delivered only if
it is exactly the next offset of the cursor's epoch; one at or below the cursor
is a duplicate and dropped; one further ahead is *held* and a repair is
requested, because the feed (Redis pub/sub) is at-most-once: the repair reads
the missing range from history, delivers it in order, then the held entries.
Clients therefore see a gap only when history itself no longer has the range,
and then as an offset jump they report exactly.

Joining is the seam. A new subscriber is first registered as *joining*: from
then on every entry delivered on the topic is also kept for it. Its replay is
read afterwards (possibly across an ``await``), so the replay's head is at or
past the cursor at join time. When it arrives the topic's pending batch is
flushed to the existing subscribers, then the joiner gets ``subscribed``, the
replay up to the cursor, and what was delivered while it joined beyond the
replay's head, and becomes a subscriber. Every entry is therefore in exactly one
of: its replay, its join buffer, a later batch. The first joiner of a topic sets
the cursor from its replay's head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..history import Entry, Replay
from ..protocol import Cursor, Subscribed, encode
from .links import Batch
from .stats import HubStats

logger = logging.getLogger("tether.hub")

#: Entries held ahead of a hole while it is repaired. The repair reads from the
#: cursor anyway, so dropping held entries past this costs a re-read, not data;
#: the bound keeps a feed that races far ahead of a slow repair from eating memory.
MAX_HELD = 10_000
#: Entries kept for one joiner while its replay is read. A replay read takes a
#: Redis round trip; past this the joiner is treated as a slow consumer.
MAX_JOIN_BUFFER = 10_000
#: The shortest fan-out after which the next one waits (:func:`next_flush_delay`).
#: A shorter one holds nothing else up noticeably, and a wait below epoll's 1 ms
#: resolution would cost a whole tick: at 50 subscribers and 2000 msgs/s, waiting
#: after every ~0.3 ms fan-out doubled p99.
YIELD_AFTER = 0.002
#: The loop's time between two fan-outs under load, as a share of the last one's
#: duration. Measured at 1,000 subscribers x 100 msgs/s (make bench): 1.0 gave 0.41-0.48x
#: websockets' CPU per delivery and p99 21-24 ms; 0.5 gave 0.47x and p99 17.5 ms
#: (websockets: 96-180 ms, falling behind); without it, 0.69x.
YIELD_SHARE = 0.5
#: Weight of the latest fan-out in the running duration :func:`next_flush_delay` is
#: given: sustained load moves it within a few fan-outs, while one fan-out stretched
#: by a GC pause does not make the next one wait (it showed at p99 at 50 subscribers).
FLUSH_SMOOTHING = 0.25


def next_flush_delay(*, took: float, since: float, most: float) -> float:
    """How long the next fan-out waits: until the loop has had :data:`YIELD_SHARE` of
    the time fan-outs take (``took``, smoothed by :data:`FLUSH_SMOOTHING`) since the
    last one ended (``since`` ago), never over ``most``.

    Lightly loaded (fan-outs shorter than :data:`YIELD_AFTER`) nothing waits. Under
    load fan-out takes at most about two thirds of the loop, so heartbeats, handshakes
    and client messages keep their share, and what is published while it waits goes
    out together: one write per subscriber for several messages, where the kernel's
    ``send()`` is most of a delivery's cost. Like Nagle's algorithm, but timed by the
    work itself rather than by the peer's acknowledgements.
    """
    if took < YIELD_AFTER:
        return 0.0
    return max(0.0, min(took * YIELD_SHARE, most) - since)


class Subscriber(Protocol):
    """What fan-out needs of a connection (a :class:`~tether.server.links.Link`)."""

    closed: bool

    def deliver(self, batch: Batch) -> None: ...
    def send_frames(self, frames: list[bytes], *, replay_of: str | None = None) -> None: ...


class _Feed:
    """One topic on this node."""

    __slots__ = ("cursor", "held", "joining", "pending", "repairing", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        #: Joiners and the entries delivered on the topic since each began joining.
        self.joining: dict[Subscriber, list[Entry]] = {}
        #: The last entry handed to subscribers; ``None`` until the first replay arrives.
        self.cursor: Cursor | None = None
        #: Entries that arrived ahead of the cursor, by (epoch, offset), awaiting repair.
        self.held: dict[tuple[str, int], Entry] = {}
        self.repairing = False
        #: Frames delivered this loop turn, flushed to subscribers as one write each.
        self.pending: list[bytes] = []

    def __repr__(self) -> str:
        return (
            f"<_Feed cursor={self.cursor} subscribers={len(self.subscribers)} "
            f"joining={len(self.joining)} held={len(self.held)} repairing={self.repairing}>"
        )


class Fanout:
    """Every topic this node serves: who is subscribed, and what each must get next."""

    def __init__(
        self,
        *,
        schedule_flush: Callable[[], None],
        request_repair: Callable[[str, Cursor], None],
        on_broken: Callable[[Subscriber], None],
        on_slow: Callable[[Subscriber], None],
        on_retain: Callable[[str], None],
        on_release: Callable[[str], None],
        stats: HubStats,
    ) -> None:
        self._feeds: dict[str, _Feed] = {}
        self._dirty: set[str] = set()
        self._schedule_flush = schedule_flush
        self._request_repair = request_repair
        self._on_broken = on_broken
        self._on_slow = on_slow
        self._on_retain = on_retain
        self._on_release = on_release
        self._flush_scheduled = False
        #: The hub's counters: deliveries, repairs and epoch changes are counted here.
        self.stats = stats
        self.duplicates_dropped = 0

    def __repr__(self) -> str:
        return f"<Fanout topics={len(self._feeds)} dirty={len(self._dirty)}>"

    def __contains__(self, topic: str) -> bool:
        return topic in self._feeds

    def topics(self) -> Iterable[str]:
        return self._feeds.keys()

    def cursor(self, topic: str) -> Cursor | None:
        """The furthest position of ``topic`` delivered on this node (a publish floor)."""
        feed = self._feeds.get(topic)
        return None if feed is None else feed.cursor

    def subscribers(self, topic: str) -> int:
        feed = self._feeds.get(topic)
        return 0 if feed is None else len(feed.subscribers)

    # --- subscribers ----------------------------------------------------------------

    def begin_join(self, link: Subscriber, topic: str) -> None:
        """``link`` subscribes to ``topic``: read its replay next, then call :meth:`joined`."""
        feed = self._feeds.get(topic)
        if feed is None:
            feed = self._feeds[topic] = _Feed()
            self._on_retain(topic)
        feed.joining[link] = []

    def joined(self, link: Subscriber, topic: str, replay: Replay) -> int | None:
        """``link``'s replay was read: send it and make ``link`` a subscriber.

        Returns how many frames were sent, or ``None`` when the replay is too old to
        meet this node's cursor (another joiner's newer replay set it): read the replay
        again and call this again; ``link`` keeps joining. A link that left is ignored.
        """
        feed = self._feeds.get(topic)
        if feed is None or link not in feed.joining:
            return 0
        buffered = feed.joining[link]
        first = feed.cursor is None
        if first:
            feed.cursor = Cursor(epoch=replay.epoch, offset=replay.head)
        cursor = feed.cursor
        assert cursor is not None
        frames = replay.frames
        extra: list[bytes] = []
        if replay.epoch == cursor.epoch:
            if replay.head > cursor.offset:
                # Redis is ahead of this node's feed: the rest arrives live, in order.
                frames = frames[: max(0, len(frames) - (replay.head - cursor.offset))]
            elif replay.head < cursor.offset:
                later = [e for e in buffered if e.epoch == cursor.epoch and e.offset > replay.head]
                if [e.offset for e in later] != list(range(replay.head + 1, cursor.offset + 1)):
                    return None  # part of what it needs was delivered before it joined
                extra = [e.frame for e in later]
        del feed.joining[link]
        # The seam: what is pending was delivered before this link joined.
        self._flush_topic(topic, feed)
        reply = encode(
            Subscribed(
                topic=topic,
                epoch=replay.epoch,
                head=replay.head,
                recovered=replay.recovered,
                missing=replay.missing,
                rewound=replay.rewound,
            )
        )
        link.send_frames([reply, *frames], replay_of=topic if frames else None)
        if extra:
            link.send_frames(extra)
        if not link.closed:
            feed.subscribers.add(link)
        elif not feed.subscribers and not feed.joining:
            self._drop(topic)
            return len(frames)
        if first and feed.held:
            self._drain_held(topic, feed)
        elif replay.epoch != cursor.epoch:
            self._repair(topic, feed)  # the epoch moved while it joined: re-read for everyone
        return len(frames) + len(extra)

    def join_failed(self, link: Subscriber, topic: str) -> None:
        """``link``'s replay could not be read: forget the join."""
        self.leave(link, topic)

    def leave(self, link: Subscriber, topic: str) -> None:
        feed = self._feeds.get(topic)
        if feed is None:
            return
        if link in feed.subscribers and feed.pending:
            # What was published while it was subscribed is still its to receive.
            self._flush_topic(topic, feed)
        feed.subscribers.discard(link)
        feed.joining.pop(link, None)
        if not feed.subscribers and not feed.joining:
            self._drop(topic)

    def _drop(self, topic: str) -> None:
        del self._feeds[topic]
        self._dirty.discard(topic)
        self._on_release(topic)

    # --- the feed -------------------------------------------------------------------

    def live(self, topic: str, entries: Sequence[Entry]) -> None:
        """Entries from the broker's feed (implements :class:`~.broker.LiveFeed`)."""
        feed = self._feeds.get(topic)
        if feed is None:
            return  # released meanwhile: nobody here wants it
        for entry in entries:
            self._offer(topic, feed, entry)

    def feed_reset(self) -> None:
        """The feed may have lost entries: re-read every topic from its cursor."""
        for topic, feed in self._feeds.items():
            if feed.cursor is not None:
                self._repair(topic, feed)

    def repaired(self, topic: str, replay: Replay) -> None:
        """The history read after a cursor (see ``request_repair``) arrived."""
        feed = self._feeds.get(topic)
        if feed is None:
            return
        feed.repairing = False
        self.stats.repairs += 1
        cursor = feed.cursor
        assert cursor is not None
        offset = replay.first_offset
        for frame in replay.frames:
            # Offsets already delivered (same epoch) are skipped; anything else moves on:
            # a jump over trimmed history or into a new epoch is what clients report.
            if replay.epoch != cursor.epoch or offset > cursor.offset:
                self._accept(topic, feed, Entry(offset, 0.0, frame, replay.epoch))
                cursor = feed.cursor
                assert cursor is not None
            offset += 1
        if replay.epoch != cursor.epoch and not replay.frames:
            # A new epoch with nothing in it yet: its first entry is offset 1.
            feed.cursor = Cursor(epoch=replay.epoch, offset=replay.head)
        self._drain_held(topic, feed)

    def repair_failed(self, topic: str) -> None:
        """The repair read failed: the caller retries later via :meth:`retry_repair`."""
        feed = self._feeds.get(topic)
        if feed is not None:
            feed.repairing = False

    def retry_repair(self, topic: str) -> None:
        feed = self._feeds.get(topic)
        if feed is not None and feed.cursor is not None:
            self._repair(topic, feed)

    def _offer(self, topic: str, feed: _Feed, entry: Entry) -> None:
        cursor = feed.cursor
        if cursor is not None and not feed.repairing:
            if entry.epoch == cursor.epoch:
                if entry.offset <= cursor.offset:
                    self.duplicates_dropped += 1
                    return
                if entry.offset == cursor.offset + 1:
                    self._accept(topic, feed, entry)
                    if feed.held:
                        self._drain_held(topic, feed)
                    return
            elif entry.offset == 1:
                self._accept(topic, feed, entry)  # a new epoch, seen from its start
                return
        elif cursor is not None and entry.epoch == cursor.epoch and entry.offset <= cursor.offset:
            self.duplicates_dropped += 1
            return
        # Ahead of a hole, or no cursor yet (the first replay is being read): hold it.
        if len(feed.held) < MAX_HELD:
            feed.held[entry.epoch, entry.offset] = entry
        if cursor is not None:
            self._repair(topic, feed)

    def _drain_held(self, topic: str, feed: _Feed) -> None:
        """Deliver held entries that now follow the cursor; repair if a hole remains."""
        while feed.held:
            cursor = feed.cursor
            assert cursor is not None
            nxt = feed.held.pop((cursor.epoch, cursor.offset + 1), None)
            if nxt is None:
                break
            self._accept(topic, feed, nxt)
        cursor = feed.cursor
        assert cursor is not None
        for key in [k for k in feed.held if k[0] == cursor.epoch and k[1] <= cursor.offset]:
            del feed.held[key]
            self.duplicates_dropped += 1
        if feed.held:
            self._repair(topic, feed)

    def _repair(self, topic: str, feed: _Feed) -> None:
        if feed.repairing or feed.cursor is None:
            return
        feed.repairing = True
        self._request_repair(topic, feed.cursor)

    def _accept(self, topic: str, feed: _Feed, entry: Entry) -> None:
        if feed.cursor is not None and feed.cursor.epoch != entry.epoch:
            self.stats.epoch_changes += 1  # Redis lost the topic's history: clients resync
        feed.cursor = Cursor(epoch=entry.epoch, offset=entry.offset)
        feed.pending.append(entry.frame)
        overflowed = []
        for link, buffered in feed.joining.items():
            if len(buffered) < MAX_JOIN_BUFFER:
                buffered.append(entry)
            else:
                overflowed.append(link)
        for link in overflowed:
            self._on_slow(link)  # its replay read is stuck: cut it, it resumes later
        self._dirty.add(topic)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule_flush()

    # --- writing --------------------------------------------------------------------

    def flush(self) -> None:
        """Write each topic's pending frames to its subscribers, one batch per topic."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for topic in dirty:
            feed = self._feeds.get(topic)
            if feed is not None:
                self._flush_topic(topic, feed)

    def _flush_topic(self, topic: str, feed: _Feed) -> None:
        frames = feed.pending
        if not frames:
            return
        feed.pending = []
        subscribers = feed.subscribers
        if not subscribers:
            return
        batch = Batch(frames)
        # A slow consumer may be removed from the set while we iterate: iterate a copy.
        for link in tuple(subscribers):
            try:
                link.deliver(batch)
            except Exception:
                # One broken link must not cost the other subscribers this batch.
                logger.exception("internal error delivering on %s", topic)
                self._on_broken(link)
        self.stats.deliveries += len(frames) * len(subscribers)
        self.stats.delivery_writes += len(subscribers)
