"""Several hub nodes on one real Redis behave as one hub (docs/scaling.md).

Most tests run two nodes in this process (``HubServer`` with ``redis_url``); the
failover test runs real ``tether serve`` processes behind real nginx and SIGKILLs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.cluster import cluster
from tests.redis_server import RedisServer
from tests.support import Recorder, T, counting_hub, eventually, hub_options
from tether import Hub
from tether.protocol import Cursor
from tether.server.broker import BrokerUnavailable
from tether.server.serve import HubServer


@contextlib.asynccontextmanager
async def nodes(redis: RedisServer, n: int = 2, **options: Any) -> AsyncIterator[list[HubServer]]:
    servers = [
        HubServer(Hub(**hub_options(redis_url=redis.url, redis_probe_interval=2 * T, **options)))
        for _ in range(n)
    ]
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()


def sequence(rec: Recorder, topic: str) -> list[tuple[str, int, Any]]:
    return [(d.epoch, d.offset, d.data) for d in rec.deliveries if d.topic == topic]


def exactly_once(rec: Recorder, topic: str, count: int) -> bool:
    return len(sequence(rec, topic)) >= count


async def test_two_nodes_publishing_at_once_share_one_order(redis_server: RedisServer) -> None:
    async with nodes(redis_server) as (a, b):
        watchers = [Recorder(a.url), Recorder(b.url), Recorder(b.url)]
        for rec in watchers:
            await rec.subscribed("t")

        async def publish_from(server: HubServer, tag: str) -> list[int]:
            return [await server.hub.publish("t", f"{tag}{n}") for n in range(150)]

        from_a, from_b = await asyncio.gather(publish_from(a, "a"), publish_from(b, "b"))
        assert sorted(from_a + from_b) == list(range(1, 301))  # unique and contiguous
        for rec in watchers:
            await eventually(lambda rec=rec: exactly_once(rec, "t", 300), what="300 deliveries")
        orders = [sequence(rec, "t") for rec in watchers]
        assert orders[0] == orders[1] == orders[2]
        assert [offset for _, offset, _ in orders[0]] == list(range(1, 301))
        assert len({epoch for epoch, _, _ in orders[0]}) == 1
        for rec in watchers:
            assert rec.resyncs == []
            await rec.close()


async def test_a_client_resumes_on_another_node_with_exactly_what_it_missed(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server) as (a, b):
        rec = Recorder(a.url)
        await rec.subscribed("t")  # zero messages before the drop
        epoch = (await a.hub.topic_head("t")).epoch
        await rec.client.close()
        for n in range(20):
            await a.hub.publish("t", n)
        late = Recorder(b.url)
        # Resume where the first client stood (the cursor a reload would restore).
        await late.client.subscribe("t", late.on_message, resume=Cursor(epoch=epoch, offset=0))
        await late.client.connect(timeout=100 * T)
        await eventually(lambda: exactly_once(late, "t", 20), what="the missed 20")
        assert [o for _, o, _ in sequence(late, "t")] == list(range(1, 21))
        assert all(d.recovered for d in late.deliveries)
        assert late.resyncs == []
        await late.close()


async def test_a_lost_pubsub_connection_is_repaired_from_the_stream(
    redis_server: RedisServer,
) -> None:
    # A hang shows where it waits (pytest-timeout would only show the event loop).
    async with asyncio.timeout(60), nodes(redis_server) as (a, b):
        rec = Recorder(b.url)
        await rec.subscribed("t")
        publishing = True

        async def publish() -> int:
            n = 0
            while publishing and n < 400:
                await a.hub.publish("t", n)
                n += 1
                await asyncio.sleep(0.002)
            return n

        task = asyncio.create_task(publish())
        await eventually(lambda: len(rec.deliveries) >= 20, what="deliveries under way")
        await redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")  # both nodes' feeds
        await eventually(lambda: len(rec.deliveries) >= 60, what="deliveries after the kill")
        publishing = False
        sent = await task
        await eventually(lambda: exactly_once(rec, "t", sent), what=f"all {sent} delivered")
        assert [o for _, o, _ in sequence(rec, "t")] == list(range(1, sent + 1))
        assert rec.resyncs == []
        assert b.hub.broker.stats.pubsub_reconnects >= 1  # type: ignore[attr-defined]
        assert b.hub.stats.repairs >= 1
        async with httpx.AsyncClient(base_url=b.url.replace("ws://", "http://")[:-3]) as http:
            text = (await http.get("/metrics")).text
        assert "tether_repairs_total" in text and "tether_redis_pubsub_reconnects_total" in text
        await rec.close()


@pytest.mark.parametrize("loss", ["flushall", "restart"])
async def test_lost_redis_data_starts_a_new_epoch_with_an_exact_gap_report(
    redis_server: RedisServer, loss: str
) -> None:
    async with nodes(redis_server) as (a, b):
        rec = Recorder(b.url)
        await rec.subscribed("t")
        for n in range(5):
            await a.hub.publish("t", n)
        await eventually(lambda: exactly_once(rec, "t", 5), what="5 deliveries")
        old_epoch = rec.deliveries[0].epoch
        if loss == "flushall":
            await redis_server.cli("FLUSHALL")
        else:
            await redis_server.restart()  # persistence off: everything is gone

        async def publish_after_loss() -> bool:
            try:
                await a.hub.publish("t", "new")
            except BrokerUnavailable:
                return False  # the node is still reconnecting
            return True

        await eventually(publish_after_loss, what="a publish after the loss")
        for n in range(3):
            await a.hub.publish("t", n)
        await eventually(lambda: exactly_once(rec, "t", 9), what="the new epoch's 4")
        tail = sequence(rec, "t")[5:]
        assert [o for _, o, _ in tail] == [1, 2, 3, 4]
        assert {e for e, _, _ in tail} != {old_epoch}
        assert [d for _, _, d in tail] == ["new", 0, 1, 2]
        await eventually(lambda: rec.resyncs != [], what="the resync hook")
        topic, missing = rec.resyncs[0]
        assert topic == "t"
        assert [(g.epoch, g.start, g.end) for g in missing] == [(old_epoch, 6, None)]
        assert b.hub.stats.epoch_changes == 1
        await rec.close()


async def test_redis_down_fails_publishes_loudly_and_clients_stay_connected(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server, redis_timeout=5 * T) as (a, b):
        rec = Recorder(b.url)
        await rec.subscribed("t")
        await a.hub.publish("t", "before")
        await eventually(lambda: exactly_once(rec, "t", 1), what="the first delivery")
        states_before = list(rec.states)
        await redis_server.stop()
        http = httpx.AsyncClient(base_url=a.url.replace("ws://", "http://")[:-3])
        with pytest.raises(BrokerUnavailable):
            await a.hub.publish("t", "lost?")
        reply = await http.post("/publish", json={"topic": "t", "data": 1})
        assert reply.status_code == 503 and reply.json()["code"] == "unavailable"
        assert reply.headers["retry-after"]
        await eventually(lambda: _status(http, "/readyz", 503), what="/readyz to say not ready")
        await asyncio.sleep(10 * T)
        assert rec.states == states_before  # still connected, no reconnect
        redis_server.start()

        async def published() -> bool:
            return (await http.post("/publish", json={"topic": "t", "data": "after"})).is_success

        await eventually(published, what="publishing after Redis returned")
        await eventually(lambda: _status(http, "/readyz", 200), what="/readyz ready again")
        await eventually(lambda: len(sequence(rec, "t")) >= 2, what="the later delivery")
        datas = [d for _, _, d in sequence(rec, "t")]
        assert datas == ["before", "after"]  # nothing twice, nothing published while down
        assert rec.states == states_before
        await http.aclose()
        await rec.close()


async def _status(http: httpx.AsyncClient, path: str, code: int) -> bool:
    return (await http.get(path)).status_code == code


async def test_a_client_message_retried_on_another_node_is_not_handled_twice(
    redis_server: RedisServer,
) -> None:
    hub_a, handled_a = counting_hub(redis_url=redis_server.url)
    hub_b, handled_b = counting_hub(redis_url=redis_server.url)
    a, b = HubServer(hub_a), HubServer(hub_b)
    await a.start()
    await b.start()
    try:
        frame = json.dumps({"type": "send", "id": "0123456789abcdef-1", "event": "n", "data": 7})
        answers = []
        for server in (a, b, a):  # the first run, a retry elsewhere, a retry back home
            async with websockets.connect(server.url, subprotocols=["tether.v1"]) as ws:
                await ws.send(frame)
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if reply["type"] in ("ack", "nack"):
                        answers.append(reply)
                        break
        assert handled_a + handled_b == [7]
        assert [r["type"] for r in answers] == ["ack", "ack", "ack"]
        assert all(r["result"] == 7 for r in answers)
        assert hub_b.stats.sends_deduplicated == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_listener_behind_nginx_survives_a_node_kill_with_every_offset_once(
    redis_server: RedisServer,
) -> None:
    args = ["--redis-url", redis_server.url, "--insecure-dev", "--redis-probe-interval", "0.5"]
    async with cluster(n=3, extra_args=args) as (servers, lb):
        rec = Recorder(lb.ws_url)
        await rec.subscribed("feed")
        # The node the listener is attached to: the one counting a connection.
        https = [httpx.AsyncClient(base_url=s.url) for s in servers]
        counts = [(await h.get("/healthz")).json()["connections"] for h in https]
        home = counts.index(1)
        total, killed = 5000, False
        offsets: list[int] = []

        async def publisher(lane: int) -> None:
            nonlocal killed
            for n in range(lane, total, 2):
                while True:
                    alive = [i for i in range(3) if i != home or not killed]
                    http = https[alive[(n // 2) % len(alive)]]  # a mix of nodes
                    try:
                        reply = await http.post("/publish", json={"topic": "feed", "data": n})
                    except httpx.TransportError:
                        continue  # the killed node: publish elsewhere
                    if reply.is_success:
                        offsets.append(reply.json()["offset"])
                        break
                if n == total // 2 and not killed:
                    killed = True
                    servers[home].kill()

        await asyncio.gather(publisher(0), publisher(1))
        head = max(offsets)
        await eventually(
            lambda: len(rec.deliveries) >= head, timeout=300 * T, what=f"{head} deliveries"
        )
        got = [o for _, o, _ in sequence(rec, "feed")]
        assert got == list(range(1, head + 1))  # every offset once, in order
        assert len({e for e, _, _ in sequence(rec, "feed")}) == 1  # one epoch
        assert rec.reconnects >= 1 and rec.resyncs == []
        for http in https:
            await http.aclose()
        await rec.close()
