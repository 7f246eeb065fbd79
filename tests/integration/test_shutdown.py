"""Graceful shutdown: 1012 with a randomised retry hint, and the fleet comes back spread out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import websockets

from tether import Hub, Publisher, State

from ..conftest import StartHub
from ..redis_server import RedisServer
from ..support import Recorder, T, eventually, hub_options


async def test_close_frame_is_1012_with_a_hint(start_hub: StartHub) -> None:
    server = await start_hub(restart_spread=2.0)
    async with websockets.connect(server.url) as ws:
        await ws.recv()  # welcome
        await server.stop()
        await ws.wait_closed()
        assert ws.close_code == 1012
        body = json.loads(ws.close_reason or "")
        assert 0 <= body["retry_after_ms"] <= 2000
        assert body["message"] == "server restarting"


async def test_clients_return_spread_out(start_hub: StartHub) -> None:
    spread = 20 * T
    first = await start_hub(restart_spread=spread)
    # Backoff is tiny: any spread observed comes from the hub's hints.
    clients = [Recorder(first.url, backoff_base=T / 100, backoff_cap=T / 100) for _ in range(20)]
    await asyncio.gather(*(rec.subscribed("t") for rec in clients))
    await first.stop()
    stopped_at = time.monotonic()
    await start_hub(Hub(**hub_options(port=first.port)))
    await eventually(
        lambda: all(rec.client.metrics.total_reconnects == 1 for rec in clients),
        what="every client back",
    )
    arrivals = sorted(
        max(at for _, new, at in rec.states if new is State.CONNECTED) - stopped_at
        for rec in clients
    )
    assert arrivals[-1] - arrivals[0] > spread / 3, arrivals
    assert arrivals[-1] <= spread + 10 * T
    for rec in clients:
        await rec.close()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload < 126 bytes)."""
    key = os.urandom(4)
    return (
        bytes([0x80 | opcode, 0x80 | len(payload)])
        + key
        + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


def server_frames(data: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole (unmasked) server frame off the front of ``data``."""
    frames = []
    while len(data) >= 2:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            break
        frames.append((data[0] & 0x0F, bytes(data[start : start + length])))
        del data[: start + length]
    return frames


async def test_nothing_is_delivered_after_the_close_frame(
    start_hub: StartHub, redis_server: RedisServer
) -> None:
    # With Redis the feed goes on while the hub shuts down. A link closed behind the
    # hub's back kept taking deliveries, written after its Close frame (RFC 6455 5.5.1:
    # nothing may follow it), while the client's close reply was on its way.
    server = await start_hub(redis_url=redis_server.url, shutdown_timeout=5.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.write(client_frame(0x1, b'{"type":"subscribe","topic":"t"}'))
    publisher = Publisher(redis_server.url)
    buffer = bytearray()
    seen: list[tuple[int, bytes]] = []

    async def read_some() -> None:
        chunk = await reader.read(65536)
        if not chunk:
            raise EOFError
        buffer.extend(chunk)
        seen.extend(server_frames(buffer))

    async def publish() -> None:
        n = 0
        while True:
            n += 1
            await publisher.publish("t", n)
            await asyncio.sleep(T / 50)

    publishing = asyncio.create_task(publish())
    try:
        async with asyncio.timeout(100 * T):
            while not any(b'"type":"message"' in f for _, f in seen):
                await read_some()
        stopping = asyncio.create_task(server.stop())
        async with asyncio.timeout(100 * T):
            while not any(op == 0x8 for op, _ in seen):
                await read_some()
        close_at = next(i for i, (op, _) in enumerate(seen) if op == 0x8)
        # The reply waits while the feed goes on: whatever the hub sends now is after it.
        with contextlib.suppress(TimeoutError, EOFError):
            async with asyncio.timeout(10 * T):
                while True:
                    await read_some()
        writer.write(client_frame(0x8, seen[close_at][1][:2]))
        await stopping
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        await publisher.aclose()
        writer.close()
    code = int.from_bytes(seen[close_at][1][:2], "big")
    assert code == 1012
    after = seen[close_at + 1 :]
    assert after == [], f"{len(after)} frame(s) after the Close, e.g. {after[:2]}"
