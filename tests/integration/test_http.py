"""HTTP publish and health endpoints, and limits on what clients may send."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets

from tether.server.serve import HubServer

from ..conftest import StartHub
from ..processes import free_port
from ..support import Recorder, eventually, post_publish


async def test_publish_over_http_reaches_subscribers(hub_server: HubServer) -> None:
    rec = Recorder(hub_server.url)
    await rec.subscribed("orders")
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        reply = await http.post("/publish", json={"topic": "orders", "data": {"id": 7}})
        assert reply.status_code == 200
        body = reply.json()
        assert body["offset"] == 1 and body["topic"] == "orders" and body["epoch"]
        health = (await http.get("/healthz")).json()
        assert health == {"status": "ok", "connections": 1, "topics": 1}
    await eventually(lambda: len(rec.deliveries) == 1, what="delivery")
    assert rec.deliveries[0].data == {"id": 7}
    await rec.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{oops", 400, "invalid_json"),
        (b'{"topic": "bad topic", "data": 1}', 400, "invalid_frame"),
        (b'{"data": 1}', 400, "invalid_frame"),
        (b'{"topic": "t", "data": 1, "extra": true}', 400, "invalid_frame"),
    ],
)
async def test_bad_publish_bodies_are_refused_and_change_nothing(
    hub_server: HubServer, body: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        reply = await post_publish(http, body)
    assert reply.status_code == status
    assert reply.json()["code"] == code and reply.json()["message"]
    assert hub_server.hub.stats.publishes == 0


async def test_oversize_http_publish_gets_413(start_hub: StartHub) -> None:
    server = await start_hub(max_frame_bytes=1024)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        reply = await http.post("/publish", json={"topic": "t", "data": "x" * 2000})
    assert reply.status_code == 413
    assert server.hub.stats.publishes == 0


async def test_oversize_websocket_frame_closes_1009(start_hub: StartHub) -> None:
    server = await start_hub(max_frame_bytes=1024)
    bystander = Recorder(server.url)
    await bystander.subscribed("t")
    async with websockets.connect(server.url) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "send", "id": "1", "event": "e", "data": "x" * 5000}))
        await ws.wait_closed()
        assert ws.close_code == 1009
    await server.hub.publish("t", 1)
    await eventually(lambda: len(bystander.deliveries) == 1, what="bystander unaffected")
    await bystander.close()


async def test_too_many_subscriptions(start_hub: StartHub) -> None:
    server = await start_hub(max_subscriptions=2)
    async with websockets.connect(server.url) as ws:
        await ws.recv()
        for topic in ("a", "b", "c"):
            await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        replies = [json.loads(await ws.recv()) for _ in range(3)]
    assert [r["type"] for r in replies] == ["subscribed", "subscribed", "error"]
    assert replies[2]["code"] == "too_many_subscriptions" and replies[2]["ref"] == "c"


async def test_backends_publish_on_the_internal_listener_without_the_accept_limit(
    start_hub: StartHub,
) -> None:
    """A fresh connection per publish (curl, requests.post) is throttled on the public
    port by the per-address accept bucket, never on the internal listener."""
    internal = free_port()
    server = await start_hub(
        insecure_dev=False,
        api_keys="k1",
        internal_port=internal,
        # 10 at once, then one per 100 s: 40 connections exceed it however slowly they come
        # (at the default 20/s a loaded machine refilled the bucket as fast as it drained).
        handshake_burst=10,
        handshake_rate=0.01,
    )
    headers = {"X-API-Key": "k1", "Connection": "close"}

    async def fresh_publishes(base: str, count: int) -> list[int]:
        codes = []
        for n in range(count):
            async with httpx.AsyncClient(base_url=base) as http:  # a new TCP connection
                try:
                    reply = await http.post(
                        "/publish", json={"topic": "t", "data": n}, headers=headers
                    )
                except httpx.TransportError:
                    codes.append(0)  # a refused socket may close before httpx reads the 429
                else:
                    codes.append(reply.status_code)
        return codes

    public = await fresh_publishes(server.http_url, 40)
    assert {429, 0} & set(public)  # the flood defence is still there for the public port
    inside = await fresh_publishes(f"http://127.0.0.1:{internal}", 100)
    assert inside == [200] * 100
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{internal}") as http:
        anonymous = await http.post("/publish", json={"topic": "t", "data": 0})
        assert anonymous.status_code == 401  # credentials are still required
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/readyz")).json() == {"status": "ready"}
