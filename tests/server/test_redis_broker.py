"""RedisBroker against a real redis-server: offsets, frames, replay, epochs, feed, dedup.

Nothing is mocked: every test runs its own ``redis-server`` (tests/redis_server.py).
Deadlines are generous and nothing asserts speed beyond "within a few timeouts".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pytest

from tests.processes import free_port
from tests.redis_server import RedisServer
from tether.config import HubConfig
from tether.history import Entry, Replay
from tether.protocol import Cursor, Message, encode
from tether.server.broker import IN_PROGRESS, BrokerUnavailable, MemoryBroker
from tether.server.redis_broker import RedisBroker
from tether.server.redis_scripts import log_key, meta_key


class Feed:
    """A LiveFeed that records what it is handed."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Entry]] = []
        self.resets = 0

    def live(self, topic: str, entries: Sequence[Entry]) -> None:
        self.entries.extend((topic, entry) for entry in entries)

    def feed_reset(self) -> None:
        self.resets += 1

    def offsets(self, topic: str) -> list[int]:
        return [e.offset for t, e in self.entries if t == topic]


async def until(predicate: Callable[[], bool], *, timeout: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


Make = Callable[..., Awaitable[tuple[RedisBroker, Feed]]]


@pytest.fixture
async def make_broker(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Make]:
    brokers: list[RedisBroker] = []

    async def make(url: str | None = None, **options: Any) -> tuple[RedisBroker, Feed]:
        settings: dict[str, Any] = {
            "history_size": 100,
            "history_ttl": 60.0,
            "timeout": 1.0,
            "probe_interval": 0.2,
        }
        settings.update(options)
        broker = RedisBroker(url or redis_server.url, **settings)
        feed = Feed()
        broker.bind(feed)
        brokers.append(broker)
        await broker.start()
        return broker, feed

    yield make
    for broker in brokers:
        await broker.aclose()
    # A close that had to abandon a step passes (it is bounded), but must be seen: it
    # once hung a CI run for 120 s. The warning summary shows where it waited.
    for record in caplog.records:
        if "did not end within" in record.getMessage():
            warnings.warn(record.getMessage(), stacklevel=1)


def raw(n: object) -> msgspec.Raw:
    return msgspec.Raw(json.dumps(n).encode())


# --- offsets and frames -----------------------------------------------------------------------


async def test_two_nodes_publishing_concurrently_get_strictly_plus_one_offsets(
    make_broker: Make,
) -> None:
    (a, _), (b, _) = await make_broker(history_size=200), await make_broker(history_size=200)
    entries = await asyncio.gather(
        *(node.publish("t", raw(i), now=time.time()) for i in range(60) for node in (a, b))
    )
    assert sorted(e.offset for e in entries) == list(range(1, 121))
    assert len({e.epoch for e in entries}) == 1
    replay = await a.replay("t", Cursor(epoch=entries[0].epoch, offset=0), now=time.time())
    assert replay.recovered and replay.head == 120
    assert [json.loads(f)["offset"] for f in replay.frames] == list(range(1, 121))


@pytest.mark.parametrize(
    ("topic", "data"),
    [
        ("t", 1),
        ("a/b:c-d.e_f*", {"nested": [1, 2.5, None, True, {"x": "y"}]}),
        ("q", 'quotes " and \\ and \u2028 and é and 😀'),
        ("q", [[[[]]]]),
        ("q", ""),
    ],
)
async def test_frames_are_byte_identical_to_protocol_encode(
    make_broker: Make,
    redis_server: RedisServer,
    topic: str,
    data: object,
) -> None:
    broker, feed = await make_broker()
    broker.retain(topic)
    await broker.synced()
    payload = msgspec.Raw(msgspec.json.encode(data))
    now = 1_700_000_000.123
    entry = await broker.publish(topic, payload, now=now)
    expected = encode(
        Message(topic=topic, epoch=entry.epoch, offset=1, ts=int(now * 1000), data=payload)
    )
    assert entry.frame == expected  # what publish returns
    stored = await redis_server.cli("XRANGE", log_key("tether", topic), "-", "+")
    assert stored[0][1][b"f"] == expected  # what replay serves (the Lua-built frame)
    await until(lambda: feed.entries != [], what="the live frame")
    assert feed.entries[0][1] == entry._replace(ts=int(now * 1000) / 1000)  # what pub/sub carries


async def test_publish_records_its_round_trip(make_broker: Make) -> None:
    broker, _ = await make_broker()
    for i in range(5):
        await broker.publish("t", raw(i), now=time.time())
    histogram = broker.stats.publish_seconds
    assert histogram.count == 5 and histogram.sum > 0
    assert histogram.cumulative()[-1] == (float("inf"), 5)


# --- replay equals the memory broker's --------------------------------------------------------


def normalised(replay: Replay, epoch: str) -> tuple[Any, ...]:
    """A replay with its epoch spelled "E", to compare two brokers' answers."""
    frames = [f.replace(f'"epoch":"{epoch}"'.encode(), b'"epoch":"E"') for f in replay.frames]
    missing = [(g.epoch.replace(epoch, "E"), g.start, g.end) for g in replay.missing]
    return (replay.epoch == epoch, replay.head, replay.recovered, missing, frames, replay.rewound)


@pytest.mark.parametrize(("size", "ttl"), [(5, 10.0), (0, 10.0), (100, 3.0), (3, 0.0)])
async def test_replay_matches_the_memory_broker_for_the_same_history(
    make_broker: Make, size: int, ttl: float
) -> None:
    redis, _ = await make_broker(history_size=size, history_ttl=ttl)
    memory = MemoryBroker(history_size=size, history_ttl=ttl, max_topics=10)
    epochs = {}
    for broker in (redis, memory):
        for n in range(12):
            entry = await broker.publish("t", raw({"n": n}), now=float(n))
        epochs[broker] = entry.epoch

    def cursors(epoch: str) -> list[Cursor | None]:
        return [
            None,
            Cursor(epoch=epoch, offset=0),
            Cursor(epoch=epoch, offset=7),
            Cursor(epoch=epoch, offset=11),
            Cursor(epoch=epoch, offset=12),
            Cursor(epoch=epoch, offset=40),  # ahead of the head
            Cursor(epoch="another", offset=4),
        ]

    # Ages are judged by the injected clock; nows only grow (the memory broker prunes).
    # A rewind counts without a resume only (the first cursor), and is ignored with one.
    for now in (11.0, 13.0, 14.5, 100.0):
        for i in range(7):
            for rewind in (0, 1, 4, 50):
                answers = []
                for broker in (redis, memory):
                    resume = cursors(epochs[broker])[i]
                    replay = await broker.replay("t", resume, now=now, rewind=rewind)
                    answers.append(normalised(replay, epochs[broker]))
                assert answers[0] == answers[1], (now, i, rewind)


async def test_redis_itself_holds_only_the_bounded_history_with_ttls(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    broker, _ = await make_broker(history_size=5, history_ttl=3.0, topic_ttl=600.0)
    for n in range(12):
        await broker.publish("t", raw(n), now=float(n))
    stream = await redis_server.cli("XRANGE", log_key("tether", "t"), "-", "+")
    # Published at t=0..11 s with a 3 s window: the publish at 11 trimmed everything
    # published before t=8 (offsets 1..8), by age, in Redis, not only when replaying.
    assert [entry_id for entry_id, _ in stream] == [b"9-0", b"10-0", b"11-0", b"12-0"]
    assert 0 < await redis_server.cli("PTTL", log_key("tether", "t")) <= (3.0 + 5.0) * 1000
    assert 590_000 < await redis_server.cli("PTTL", meta_key("tether", "t")) <= 600_000


async def test_a_first_replay_anchors_the_epoch_the_publishes_then_use(make_broker: Make) -> None:
    broker, _ = await make_broker()
    replay = await broker.replay("fresh", None, now=time.time())
    assert (replay.head, replay.recovered, replay.frames) == (0, True, [])
    entry = await broker.publish("fresh", raw(1), now=time.time())
    assert (entry.epoch, entry.offset) == (replay.epoch, 1)
    assert broker.stats.epoch_changes == 0


# --- epochs -----------------------------------------------------------------------------------


async def test_flushall_makes_the_next_publish_start_a_new_epoch(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    broker, _ = await make_broker()
    await broker.publish("t", raw(1), now=time.time())
    old = await broker.publish("t", raw(2), now=time.time())
    await redis_server.cli("FLUSHALL")
    floor = Cursor(epoch=old.epoch, offset=old.offset)
    new = await broker.publish("t", raw(3), now=time.time(), floor=floor)
    assert new.epoch != old.epoch and new.offset == 1
    assert broker.stats.epoch_changes == 1
    replay = await broker.replay("t", floor, now=time.time())
    assert [(g.epoch, g.start, g.end) for g in replay.missing] == [(old.epoch, 3, None)]
    assert [json.loads(f)["offset"] for f in replay.frames] == [1]


async def test_a_resume_after_flushall_counts_an_epoch_change(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    broker, _ = await make_broker()
    old = await broker.publish("t", raw(1), now=time.time())
    await redis_server.cli("FLUSHALL")
    replay = await broker.replay("t", Cursor(epoch=old.epoch, offset=1), now=time.time())
    assert replay.epoch != old.epoch and not replay.recovered
    assert broker.stats.epoch_changes == 1


async def test_a_head_below_the_floor_is_a_rollback_and_starts_a_new_epoch(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    broker, _ = await make_broker()
    for i in range(3):
        seen = await broker.publish("t", raw(i), now=time.time())
    # Redis "loses" offsets 2 and 3, as a failover to a lagging replica would.
    await redis_server.cli("HSET", meta_key("tether", "t"), "head", 1)
    await redis_server.cli("XTRIM", log_key("tether", "t"), "MAXLEN", 1)
    floor = Cursor(epoch=seen.epoch, offset=seen.offset)
    after = await broker.publish("t", raw("x"), now=time.time(), floor=floor)
    assert after.epoch != seen.epoch and after.offset == 1  # never a second offset 2
    assert broker.stats.epoch_changes == 1
    # A floor of another epoch, or not ahead of the head, changes nothing.
    nxt = await broker.publish("t", raw("y"), now=time.time(), floor=floor)
    assert (nxt.epoch, nxt.offset) == (after.epoch, 2)
    nxt = await broker.publish(
        "t", raw("z"), now=time.time(), floor=Cursor(epoch=after.epoch, offset=2)
    )
    assert (nxt.epoch, nxt.offset) == (after.epoch, 3)
    assert broker.stats.epoch_changes == 1


# --- live feed --------------------------------------------------------------------------------


async def test_the_feed_carries_retained_topics_only_and_stops_after_release(
    make_broker: Make,
) -> None:
    (node, feed), (other, _) = await make_broker(), await make_broker()
    node.retain("a")
    node.retain("marker")
    await node.synced()
    await other.publish("a", raw(1), now=time.time())  # another node's publish
    await node.publish("a", raw(2), now=time.time())  # and this node's own
    await other.publish("b", raw(1), now=time.time())  # never retained
    await other.publish("marker", raw(1), now=time.time())
    await until(lambda: feed.offsets("marker") == [1], what="the marker")
    assert feed.offsets("a") == [1, 2]
    assert feed.offsets("b") == []
    assert len(node) == 2
    node.release("a")
    await node.synced()
    await other.publish("a", raw(3), now=time.time())
    await other.publish("marker", raw(2), now=time.time())
    # Pub/sub keeps order on one connection: once the marker is in, "a" would be too.
    await until(lambda: feed.offsets("marker") == [1, 2], what="the second marker")
    assert feed.offsets("a") == [1, 2]
    node.release_all()
    assert len(node) == 0
    await node.synced()


async def test_a_new_subscription_is_caught_up_with_the_topic_head(make_broker: Make) -> None:
    # Published after the hub's replay but before SUBSCRIBE took effect: the feed must
    # still show the head, or the hub would not know to repair until the next message.
    (node, feed), (other, _) = await make_broker(), await make_broker()
    await other.publish("a", raw(1), now=time.time())
    await other.publish("a", raw(2), now=time.time())
    node.retain("a")
    await until(lambda: 2 in feed.offsets("a"), what="the catch-up entry")


async def test_killed_pubsub_connection_reconnects_resubscribes_and_resets_the_feed(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    (node, feed), (other, _) = await make_broker(), await make_broker()
    for topic in ("a", "b", "c"):
        node.retain(topic)
    await node.synced()
    resets = feed.resets
    killed = await redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed == 1  # one pub/sub connection for all of a node's topics
    await until(lambda: node.stats.pubsub_reconnects == 1, what="the reconnect")
    await until(lambda: feed.resets == resets + 1, what="the feed reset")
    assert node.ready
    await other.publish("a", raw(1), now=time.time())
    await until(lambda: feed.offsets("a") == [1], what="a message after resubscribing")


async def test_a_lost_notification_of_an_own_publish_resets_the_feed(make_broker: Make) -> None:
    # Pub/sub can lose a message without dropping the connection (e.g. a client output
    # buffer limit on a proxy). Fault injection in our own reader stands in for that.
    node, feed = await make_broker()
    await node.publish("a", raw(1), now=time.time())
    node.retain("a")
    # The new subscription's catch-up hands offset 1 over once; wait for it, so it can't
    # pass on the message dropped below (which it rightly would).
    await until(lambda: feed.offsets("a") == [1], what="the catch-up")
    deliver = node._on_message
    dropped: list[bytes] = []

    def lossy(channel: bytes, frame: bytes) -> None:
        if not dropped:
            dropped.append(frame)
            return
        deliver(channel, frame)

    node._on_message = lossy  # type: ignore[method-assign]
    resets = feed.resets
    await node.publish("a", raw(2), now=time.time())
    await until(lambda: feed.resets == resets + 1, what="the reset after the next pong")
    assert dropped and node.stats.pubsub_reconnects == 0 and feed.offsets("a") == [1]
    # A delivered own publish causes nothing.
    await node.publish("a", raw(3), now=time.time())
    await until(lambda: feed.offsets("a") == [1, 3], what="the third message")
    await asyncio.sleep(3 * node.probe_interval)
    assert feed.resets == resets + 1


# --- Redis down -------------------------------------------------------------------------------


async def test_redis_down_fails_publish_fast_and_ready_follows_it_back(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    node, feed = await make_broker(timeout=0.5)
    assert node.ready
    node.retain("a")
    await node.synced()
    await redis_server.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await node.publish("a", raw(1), now=time.time())
    assert time.monotonic() - started < 5 * node.timeout
    assert redis_server.url.split("/0")[0] in info.value.message
    assert info.value.code == "unavailable"
    await until(lambda: not node.ready, what="ready to go False")
    with pytest.raises(BrokerUnavailable):
        await node.replay("a", None, now=time.time())
    with pytest.raises(BrokerUnavailable):
        await node.claim("k", charge="c", now=time.time())
    resets = feed.resets
    redis_server.start()  # same port, empty data
    await until(lambda: node.ready, what="ready to come back")
    await until(lambda: feed.resets > resets, what="the feed reset after reconnecting")
    entry = await node.publish("a", raw(2), now=time.time())
    assert entry.offset == 1  # the data was gone: a new epoch
    await until(lambda: feed.offsets("a") == [1], what="live messages again")
    assert node.stats.unavailable >= 3


async def test_a_wedged_redis_times_out_and_the_feed_is_replaced(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    node, feed = await make_broker(timeout=0.5, probe_interval=0.1)
    node.retain("a")
    await node.synced()
    assert redis_server.pid is not None
    os.kill(redis_server.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no answer in time"):
            await node.publish("a", raw(1), now=time.time())
        assert time.monotonic() - started < 5 * node.timeout
        assert not node.ready
        # Kept frozen until the feed's probe gives up: a wedge shorter than ``timeout``
        # is rightly no loss (the PONG still comes).
        await until(lambda: not node.feed_ready, what="the probe to give up")
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    await until(lambda: node.ready and node.stats.pubsub_reconnects >= 1, what="recovery")
    await until(lambda: feed.resets >= 1, what="the feed reset")
    entry = await node.publish("a", raw(2), now=time.time())
    await until(lambda: entry.offset in feed.offsets("a"), what="live messages again")


async def test_a_broker_started_without_redis_keeps_trying_and_hides_the_password(
    make_broker: Make,
) -> None:
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    started = time.monotonic()
    node, _ = await make_broker(url, timeout=0.3)
    assert time.monotonic() - started < 5  # start() never hangs
    assert not node.ready
    assert "s3cret" not in repr(node) and "ready=False" in repr(node)
    with pytest.raises(BrokerUnavailable) as info:
        await node.publish("t", raw(1), now=time.time())
    assert "s3cret" not in info.value.message and f"127.0.0.1:{port}" in info.value.message
    with RedisServer(port, password="s3cret"):
        await until(lambda: node.ready, what="the late Redis")
        assert (await node.publish("t", raw(1), now=time.time())).offset == 1


async def test_closing_ends_even_if_a_step_hangs_and_says_what_hung(
    make_broker: Make,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # redis-py cannot be made to hang on demand: its close is replaced by a wait for
    # ever, to check that a shutdown still ends and names the step (seen once in CI).
    node, _ = await make_broker(timeout=0.2)
    node.retain("a")
    await node.synced()
    monkeypatch.setattr(node._client, "aclose", asyncio.Event().wait)
    started = time.monotonic()
    await node.aclose()
    assert time.monotonic() - started < 10  # bounded: timeout + 1 s per step, not for ever
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("closing the command connections did not end" in e for e in errors), errors
    assert all(
        task.done() for task in asyncio.all_tasks() if task.get_name().startswith("tether-redis")
    )
    caplog.clear()  # expected here: the fixture warns of any other


# --- dedup ------------------------------------------------------------------------------------


async def test_claim_and_settle_across_two_nodes(make_broker: Make) -> None:
    (a, _), (b, _) = await make_broker(), await make_broker()
    assert await a.claim("k", charge="c", now=1.0) is None  # new: a handles it
    assert await b.claim("k", charge="c", now=1.0) == IN_PROGRESS  # b is told to wait
    await a.settle("k", b'{"type":"ack","id":"k"}')
    assert await b.claim("k", charge="c", now=2.0) == b'{"type":"ack","id":"k"}'
    # Dropping a claim (the run was cut short) lets a retry run it afresh.
    assert await a.claim("cut", charge="c", now=3.0) is None
    await a.settle("cut", None)
    assert await b.claim("cut", charge="c", now=4.0) is None
    with pytest.raises(ValueError, match="empty"):
        await a.settle("k", b"")


async def test_each_charge_evicts_only_its_own_oldest(
    make_broker: Make,
    redis_server: RedisServer,
) -> None:
    node, _ = await make_broker(dedup_window=3)
    assert await node.claim("b1", charge="B", now=0.0) is None
    for i in range(1, 5):  # A's fourth id evicts A's first
        assert await node.claim(f"a{i}", charge="A", now=float(i)) is None
        await node.settle(f"a{i}", f"reply{i}".encode())
    assert await node.claim("b1", charge="B", now=5.0) == IN_PROGRESS  # untouched
    for i in (2, 3, 4):
        assert await redis_server.cli("GET", f"tether:dedup:a{i}") == f"reply{i}".encode()
    assert await redis_server.cli("EXISTS", "tether:dedup:a1") == 0
    assert await redis_server.cli("ZCARD", "tether:dedup-charge:A") == 3
    assert await node.claim("a1", charge="A", now=6.0) is None  # forgotten: runs afresh


# --- construction -----------------------------------------------------------------------------


def test_from_config_and_the_protocol_basics() -> None:
    config = HubConfig(
        redis_url="redis://user:pw@localhost:6379/2",
        redis_prefix="app",
        history_size=7,
        redis_timeout=0.7,
        dedup_window=9,
    )
    broker = RedisBroker.from_config(config)
    assert (broker.prefix, broker.history_size, broker.timeout, broker.dedup_window) == (
        "app",
        7,
        0.7,
        9,
    )
    assert broker.shared and not broker.ready and len(broker) == 0
    assert "pw" not in repr(broker) and "user:***@localhost:6379/2" in repr(broker)
    with pytest.raises(ValueError, match="prefix"):
        RedisBroker("redis://localhost", history_size=1, history_ttl=1.0, prefix="a{b}")
    with pytest.raises(ValueError):
        RedisBroker("", history_size=1, history_ttl=1.0)
