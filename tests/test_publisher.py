"""Publisher against a real redis-server: the hubs' offsets, frames, rules and feed."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Sequence

import msgspec
import pytest

from tests.processes import free_port
from tests.redis_server import RedisServer
from tether.config import HubConfig
from tether.history import Entry
from tether.payload import InvalidPayload
from tether.protocol import Cursor, Message, encode
from tether.publisher import Publisher
from tether.server.broker import BrokerUnavailable
from tether.server.redis_broker import RedisBroker
from tether.server.redis_scripts import log_key, meta_key


class Feed:
    def __init__(self) -> None:
        self.entries: list[tuple[str, Entry]] = []

    def live(self, topic: str, entries: Sequence[Entry]) -> None:
        self.entries.extend((topic, e) for e in entries)

    def feed_reset(self) -> None:
        pass


async def until_true(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s")
        await asyncio.sleep(0.01)


async def test_publishes_get_offsets_and_frames_exactly_as_the_hubs_write_them(
    redis_server: RedisServer,
) -> None:
    async with Publisher(redis_server.url) as publisher:
        assert await publisher.publish("orders/42", {"status": "new"}) == 1
        assert await publisher.publish("orders/42", msgspec.Raw(b'{"status":"paid"}')) == 2
    stream = await redis_server.cli("XRANGE", log_key("tether", "orders/42"), "-", "+")
    epoch = (await redis_server.cli("HGET", meta_key("tether", "orders/42"), "epoch")).decode()
    for (entry_id, fields), (offset, data) in zip(
        stream, [(1, b'{"status":"new"}'), (2, b'{"status":"paid"}')], strict=True
    ):
        assert entry_id == f"{offset}-0".encode()
        expected = encode(
            Message(
                topic="orders/42",
                epoch=epoch,
                offset=offset,
                ts=int(fields[b"t"]),
                data=msgspec.Raw(data),
            )
        )
        assert fields[b"f"] == expected


async def test_hub_nodes_receive_and_replay_what_it_publishes(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url, history_size=10, history_ttl=60.0, timeout=1.0)
    feed = Feed()
    broker.bind(feed)
    await broker.start()
    try:
        hub_entry = await broker.publish("t", msgspec.Raw(b"0"), now=time.time())
        broker.retain("t")
        await broker.synced()
        async with Publisher(redis_server.url, history_size=10) as publisher:
            assert await publisher.publish("t", [1, 2]) == 2  # shares the hub's offsets
        await until_true(lambda: any(e.offset == 2 for _, e in feed.entries))
        replay = await broker.replay("t", Cursor(epoch=hub_entry.epoch, offset=0), now=time.time())
        assert replay.recovered
        assert [json.loads(f)["data"] for f in replay.frames] == [0, [1, 2]]
    finally:
        await broker.aclose()


@pytest.mark.parametrize(
    ("topic", "data", "error"),
    [
        ("bad topic", 1, ValueError),
        ("", 1, ValueError),
        ("t", float("nan"), InvalidPayload),
        ("t", 2**60, InvalidPayload),
        ("t", "\ud800", InvalidPayload),
        ("t", [[[[[[1]]]]]], InvalidPayload),  # deeper than max_payload_depth=4 below
        ("t", "x" * 200, InvalidPayload),  # bigger than max_frame_bytes=100 below
        ("t", msgspec.Raw(b"{not json"), InvalidPayload),
        ("t", msgspec.Raw(b"1e400"), InvalidPayload),
        ("t", object(), TypeError),
    ],
)
async def test_refuses_what_the_hubs_refuse_and_sends_nothing(
    redis_server: RedisServer,
    topic: str,
    data: object,
    error: type[Exception],
) -> None:
    async with Publisher(redis_server.url, max_payload_depth=4, max_frame_bytes=100) as pub:
        with pytest.raises(error):
            await pub.publish(topic, data)
    assert await redis_server.cli("DBSIZE") == 0


async def test_unreachable_redis_raises_broker_unavailable_without_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    async with Publisher(url, timeout=0.5) as publisher:
        assert "hunter2" not in repr(publisher)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            await publisher.publish("t", 1)
        assert time.monotonic() - started < 5.0
    assert "hunter2" not in info.value.message and "127.0.0.1" in info.value.message


async def test_a_rollback_under_its_feet_starts_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    async with Publisher(redis_server.url) as publisher:
        for _ in range(3):
            await publisher.publish("t", 1)
        epoch = await redis_server.cli("HGET", meta_key("tether", "t"), "epoch")
        await redis_server.cli("HSET", meta_key("tether", "t"), "head", 1)  # Redis lost 2, 3
        assert await publisher.publish("t", 1) == 1  # its floor (3) shows the rollback
        assert await redis_server.cli("HGET", meta_key("tether", "t"), "epoch") != epoch


def test_defaults_are_the_hubs_defaults() -> None:
    config = HubConfig()
    defaults = {name: p.default for name, p in inspect.signature(Publisher).parameters.items()}
    assert defaults["prefix"] == config.redis_prefix
    assert defaults["history_size"] == config.history_size
    assert defaults["history_ttl"] == config.history_ttl
    assert defaults["topic_ttl"] == config.redis_topic_ttl
    assert defaults["timeout"] == config.redis_timeout
    assert defaults["max_frame_bytes"] == config.max_frame_bytes
    assert defaults["max_payload_depth"] == config.max_payload_depth


async def test_closed_publisher_refuses(redis_server: RedisServer) -> None:
    publisher = Publisher(redis_server.url)
    await publisher.aclose()
    await publisher.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish("t", 1)
