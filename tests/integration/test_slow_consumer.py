"""A subscriber that cannot keep up is cut off (4008), others are untouched, and it resumes."""

from __future__ import annotations

import asyncio
import json
import socket

import websockets

from tether import Delivery
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import Recorder, T, eventually

PAYLOAD = "x" * 4000


async def test_stalled_reader_is_cut_off_and_others_get_everything(start_hub: StartHub) -> None:
    server: HubServer = await start_hub(max_send_buffer_bytes=64 * 1024, history_size=5000)
    fast = [Recorder(server.url) for _ in range(3)]
    for rec in fast:
        await rec.subscribed("t")

    # A reader that subscribes, then never reads again, through a tiny receive buffer.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    stuck = await websockets.connect(server.url, sock=sock, max_queue=1)
    await stuck.send(json.dumps({"type": "subscribe", "topic": "t"}))
    await asyncio.sleep(T)
    stuck.transport.pause_reading()

    total = 1500
    for n in range(total):
        await server.hub.publish("t", {"n": n, "pad": PAYLOAD})
        if n % 50 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: server.hub.stats.slow_consumers == 1, what="slow consumer cut")
    for rec in fast:
        await eventually(lambda rec=rec: len(rec.deliveries) == total, what="fast clients")
        assert rec.offsets("t") == list(range(1, total + 1))
        assert rec.reconnects == 0
    assert server.hub.connection_count == 3
    stuck.transport.abort()


async def test_slow_client_resumes_and_gets_everything_once(start_hub: StartHub) -> None:
    server = await start_hub(max_send_buffer_bytes=32 * 1024, history_size=5000)
    slow = Recorder(server.url)

    async def slow_handler(msg: Delivery) -> None:
        slow.deliveries.append(msg)
        await asyncio.sleep(0.001)

    await slow.client.subscribe("t", slow_handler)
    await slow.client.connect(timeout=50 * T)
    await eventually(lambda: slow.client.is_live("t"), what="subscribed")
    # 24 MB: more than loopback's kernel socket buffers can absorb.
    total = 3000
    for n in range(total):
        await server.hub.publish("t", {"n": n, "pad": PAYLOAD * 2})
        if n % 100 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: len(slow.deliveries) >= total, timeout=300 * T, what="all delivered")
    assert slow.offsets("t") == list(range(1, total + 1))
    assert server.hub.stats.slow_consumers >= 1
    assert slow.resyncs == []
    await slow.close()
