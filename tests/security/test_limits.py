"""Handshake rate and connection caps, per-connection frame rate: each breach has its code."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from ..conftest import StartHub
from ..support import Recorder, T, eventually


async def test_handshake_rate_per_address_gets_429_with_retry_after(start_hub: StartHub) -> None:
    server = await start_hub(handshake_rate=0.5, handshake_burst=3)
    for _ in range(3):
        async with websockets.connect(server.url) as ws:
            await ws.recv()
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(server.url)
    assert info.value.response.status_code == 429
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert server.hub.stats.handshakes_refused == 1
    # Another address has its own bucket (127.0.0.1's is empty: even /metrics gets 429).
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=server.http_url, transport=other) as http:
        metrics = (await http.get("/metrics")).text
    assert "tether_handshakes_refused_total 1.0" in metrics


async def test_connection_caps(start_hub: StartHub) -> None:
    server = await start_hub(max_connections=2)
    async with websockets.connect(server.url) as a, websockets.connect(server.url) as b:
        await a.recv()
        await b.recv()
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(server.url)
        assert info.value.response.status_code == 503
        assert "Retry-After" in info.value.response.headers
    # Slots free up when connections end.
    await eventually(lambda: server.hub.admission.open == 0, what="slots released")
    async with websockets.connect(server.url) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
    per_address = await start_hub(max_connections_per_address=1)
    async with websockets.connect(per_address.url) as ws:
        await ws.recv()
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(per_address.url)
        assert info.value.response.status_code == 429


async def test_frame_flood_is_rate_limited_and_others_unaffected(start_hub: StartHub) -> None:
    server = await start_hub(inbound_rate=5, inbound_burst=10)
    bystander = Recorder(server.url)
    await bystander.subscribed("t")
    async with websockets.connect(server.url) as ws:
        await ws.recv()
        for n in range(50):
            await ws.send(json.dumps({"type": "ping", "ts": n}))
        replies = [json.loads(await ws.recv()) for _ in range(50)]
    pongs = [r for r in replies if r["type"] == "pong"]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(pongs) + len(limited) == 50
    assert 10 <= len(pongs) <= 15 and len(limited) >= 35
    await server.hub.publish("t", "unaffected")
    await eventually(lambda: len(bystander.deliveries) == 1, what="bystander delivery")
    await bystander.close()


async def test_slowloris_handshake_is_timed_out(start_hub: StartHub) -> None:
    # Long heartbeats: the raw client below never answers pings, and that is not under test.
    server = await start_hub(
        handshake_timeout=5 * T, heartbeat_interval=100 * T, heartbeat_timeout=100 * T
    )
    async with websockets.connect(server.url) as legit:  # upgraded before the deadline
        await legit.recv()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websock")  # and stops
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 50 * T) == b""  # closed by the hub
        assert 5 * T - T / 10 <= time.monotonic() - started <= 30 * T
        writer.close()
        await asyncio.sleep(10 * T)  # well past the deadline: the real connection lives on
        await legit.send(json.dumps({"type": "ping", "ts": 1}))
        answer = json.loads(await legit.recv())
        while answer["type"] == "ping":  # the hub's own heartbeat may come first
            answer = json.loads(await legit.recv())
        assert answer == {"type": "pong", "ts": 1}
