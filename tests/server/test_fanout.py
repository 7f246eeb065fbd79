"""The fan-out core without sockets: seam, order, repair of a lossy feed (fanout.py)."""

from __future__ import annotations

import msgspec
import pytest

from tether.history import Entry, Replay, TopicLog
from tether.protocol import Cursor, Message, Subscribed, decode_server_frame
from tether.server.fanout import YIELD_AFTER, YIELD_SHARE, Fanout, next_flush_delay
from tether.server.links import Batch
from tether.server.stats import HubStats


class Sub:
    """A subscriber that records what it was sent, decoded."""

    def __init__(self) -> None:
        self.closed = False
        self.frames: list[object] = []

    def deliver(self, batch: Batch) -> None:
        self.frames.extend(decode_server_frame(f) for f in batch.frames)

    def send_frames(self, frames: list[bytes], *, replay_of: str | None = None) -> None:
        self.frames.extend(decode_server_frame(f) for f in frames)

    def offsets(self) -> list[tuple[str, int]]:
        return [(f.epoch, f.offset) for f in self.frames if isinstance(f, Message)]

    def subscribed(self) -> Subscribed:
        replies = [f for f in self.frames if isinstance(f, Subscribed)]
        assert len(replies) == 1
        return replies[0]


class World:
    """A fan-out with a history (a TopicLog per topic) and a feed we control."""

    def __init__(self) -> None:
        self.logs: dict[str, TopicLog] = {}
        self.repairs: list[tuple[str, Cursor]] = []
        self.flushes = 0
        self.retained: list[str] = []
        self.released: list[str] = []
        self.broken: list[object] = []
        self.fanout = Fanout(
            schedule_flush=self._flush_soon,
            request_repair=lambda topic, cursor: self.repairs.append((topic, cursor)),
            on_broken=self.broken.append,
            on_slow=self.broken.append,
            on_retain=self.retained.append,
            on_release=self.released.append,
            stats=HubStats(),
        )

    def _flush_soon(self) -> None:
        self.flushes += 1

    def log(self, topic: str) -> TopicLog:
        if topic not in self.logs:
            self.logs[topic] = TopicLog(topic, epoch="e1", max_size=100, max_age=1e9)
        return self.logs[topic]

    def publish(self, topic: str, n: int = 1) -> list[Entry]:
        return [self.log(topic).append(msgspec.Raw(b"1"), now=0.0) for _ in range(n)]

    def replay(self, topic: str, resume: Cursor | None) -> Replay:
        return self.log(topic).replay(resume, now=0.0)

    def run_repairs(self) -> None:
        while self.repairs:
            topic, after = self.repairs.pop(0)
            self.fanout.repaired(topic, self.replay(topic, after))

    def join(self, sub: Sub, topic: str, resume: Cursor | None = None) -> None:
        self.fanout.begin_join(sub, topic)
        assert self.fanout.joined(sub, topic, self.replay(topic, resume)) is not None


def test_a_lossless_feed_is_delivered_in_order_in_one_batch_per_turn() -> None:
    w = World()
    sub = Sub()
    w.join(sub, "t")
    assert w.retained == ["t"]
    w.fanout.live("t", w.publish("t", 3))
    assert sub.offsets() == []  # nothing written before the flush
    assert w.flushes == 1
    w.fanout.flush()
    assert sub.offsets() == [("e1", 1), ("e1", 2), ("e1", 3)]
    assert w.fanout.stats.deliveries == 3


def test_a_skipped_entry_is_repaired_from_history_before_what_follows() -> None:
    w = World()
    sub = Sub()
    w.join(sub, "t")
    one, two, three, four = w.publish("t", 4)
    w.fanout.live("t", [one])
    w.fanout.live("t", [three])  # two was lost on the way
    w.fanout.live("t", [four])
    assert w.repairs == [("t", Cursor(epoch="e1", offset=1))]  # one repair, not two
    w.run_repairs()
    w.fanout.live("t", [two])  # a late copy is a duplicate
    w.fanout.flush()
    assert sub.offsets() == [("e1", n) for n in (1, 2, 3, 4)]
    assert w.fanout.stats.repairs == 1


def test_a_lost_last_entry_is_found_by_a_feed_reset() -> None:
    w = World()
    sub = Sub()
    w.join(sub, "t")
    w.publish("t", 2)  # neither reached the feed (pub/sub reconnected)
    w.fanout.feed_reset()
    w.run_repairs()
    w.fanout.flush()
    assert sub.offsets() == [("e1", 1), ("e1", 2)]


def test_history_trimmed_under_a_hole_jumps_and_the_client_sees_the_jump() -> None:
    w = World()
    w.logs["t"] = TopicLog("t", epoch="e1", max_size=2, max_age=1e9)
    sub = Sub()
    w.join(sub, "t")
    entries = w.publish("t", 5)  # only 4 and 5 are kept
    w.fanout.live("t", [entries[4]])
    w.run_repairs()
    w.fanout.flush()
    assert sub.offsets() == [("e1", 4), ("e1", 5)]


def test_a_new_epoch_is_delivered_from_its_start() -> None:
    w = World()
    sub = Sub()
    w.join(sub, "t")
    w.fanout.live("t", w.publish("t", 2))
    w.logs["t"] = TopicLog("t", epoch="e2", max_size=100, max_age=1e9)  # Redis was flushed
    _first, second = w.publish("t", 2)
    w.fanout.live("t", [second])  # the new epoch's first entry was lost too
    w.run_repairs()
    w.fanout.flush()
    assert sub.offsets() == [("e1", 1), ("e1", 2), ("e2", 1), ("e2", 2)]
    assert w.fanout.stats.epoch_changes == 1


def test_a_joiner_gets_what_was_delivered_while_its_replay_was_read() -> None:
    w = World()
    old, new = Sub(), Sub()
    w.join(old, "t")
    w.fanout.live("t", w.publish("t", 2))
    w.fanout.begin_join(new, "t")
    replay = w.replay("t", Cursor(epoch="e1", offset=0))  # read at head 2 ...
    w.fanout.live("t", w.publish("t", 2))  # ... while 3 and 4 arrive
    assert w.fanout.joined(new, "t", replay) == 4
    w.fanout.live("t", w.publish("t"))
    w.fanout.flush()
    expected = [("e1", n) for n in range(1, 6)]
    assert old.offsets() == expected
    assert new.offsets() == expected
    assert new.subscribed().head == 2


def test_a_replay_ahead_of_the_feed_stops_at_the_cursor() -> None:
    w = World()
    old, new = Sub(), Sub()
    w.join(old, "t")
    pending = w.publish("t", 3)  # in Redis, not yet on this node's feed
    w.join(new, "t", Cursor(epoch="e1", offset=0))
    w.fanout.live("t", pending)
    w.fanout.flush()
    assert new.offsets() == old.offsets() == [("e1", 1), ("e1", 2), ("e1", 3)]


def test_a_replay_older_than_another_joiners_is_read_again() -> None:
    w = World()
    a, b = Sub(), Sub()
    w.fanout.begin_join(a, "t")
    w.fanout.begin_join(b, "t")
    w.publish("t", 1)
    stale = w.replay("t", None)  # b's read: head 1
    w.publish("t", 2)
    assert w.fanout.joined(a, "t", w.replay("t", None)) == 0  # a's read: head 3
    assert w.fanout.joined(b, "t", stale) is None  # 2 and 3 were never on the feed
    assert w.fanout.joined(b, "t", w.replay("t", Cursor(epoch="e1", offset=1))) == 2
    assert b.offsets() == [("e1", 2), ("e1", 3)]


def test_leaving_gets_what_was_published_while_subscribed_then_releases() -> None:
    w = World()
    sub = Sub()
    w.join(sub, "t")
    w.fanout.live("t", w.publish("t"))
    w.fanout.leave(sub, "t")
    assert sub.offsets() == [("e1", 1)]
    assert w.released == ["t"]
    w.fanout.live("t", w.publish("t"))  # a late feed entry for a released topic
    assert "t" not in w.fanout


@pytest.mark.parametrize("lost", [(2,), (2, 3), (1, 4), (5,), (1, 2, 3, 4, 5)])
def test_whatever_the_feed_loses_every_subscriber_gets_every_offset_once(
    lost: tuple[int, ...],
) -> None:
    w = World()
    subs = [Sub(), Sub()]
    for sub in subs:
        w.join(sub, "t")
    for entry in w.publish("t", 5):
        if entry.offset not in lost:
            w.fanout.live("t", [entry])
    w.fanout.feed_reset()  # what a pub/sub reconnect or failed probe does
    w.run_repairs()
    w.fanout.flush()
    for sub in subs:
        assert sub.offsets() == [("e1", n) for n in range(1, 6)]


# --- yielding the loop under load (next_flush_delay) -----------------------------------------


@pytest.mark.parametrize(
    ("took", "since", "most", "expected"),
    [
        (0.0005, 0.0, 0.02, 0.0),  # lightly loaded: a short fan-out makes nothing wait
        (YIELD_AFTER / 2, 0.0, 0.02, 0.0),
        (0.010, 0.0, 0.02, 0.010 * YIELD_SHARE),  # right after a 10 ms fan-out
        (0.010, 0.002, 0.02, 0.010 * YIELD_SHARE - 0.002),  # part of the time has passed
        (0.010, 0.050, 0.02, 0.0),  # the loop has long had its share
        (0.200, 0.0, 0.02, 0.02),  # a very long fan-out (a GC pause): capped
        (0.010, 0.0, 0.0, 0.0),  # fanout_yield_max = 0 turns it off
    ],
)
def test_the_next_flush_waits_a_share_of_the_last_under_load_only(
    took: float, since: float, most: float, expected: float
) -> None:
    assert next_flush_delay(took=took, since=since, most=most) == pytest.approx(expected)
