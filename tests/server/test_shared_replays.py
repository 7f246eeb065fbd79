"""A fleet resuming from the same cursor costs one history read, not one per client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tether import Hub
from tether.history import Replay
from tether.protocol import Cursor
from tether.server.redis_broker import RedisBroker
from tether.server.serve import HubServer

from ..redis_server import RedisServer
from ..support import eventually, hub_options

JOINERS = 40


class HeldBroker(RedisBroker):
    """A real RedisBroker whose replay reads wait until the test lets them go, counted."""

    def __init__(self, url: str) -> None:
        super().__init__(url, history_size=100, history_ttl=60.0)
        self.reads = 0
        self.gate = asyncio.Event()

    async def replay(
        self, topic: str, resume: Cursor | None, *, now: float, rewind: int = 0
    ) -> Replay:
        self.reads += 1
        await self.gate.wait()
        return await super().replay(topic, resume, now=now, rewind=rewind)


async def resume(url: str, cursor: dict[str, Any]) -> list[int]:
    """Subscribe from ``cursor``; the offsets replayed, once ``subscribed`` arrived."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "t", "resume": cursor}))
        offsets: list[int] = []
        while len(offsets) < 3:
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                offsets.append(frame["offset"])
        return offsets


async def test_joiners_resuming_from_one_cursor_share_one_read(redis_server: RedisServer) -> None:
    broker = HeldBroker(redis_server.url)
    # Raw clients that never answer pings: no heartbeat deadline within the test.
    options = hub_options(heartbeat_interval=600, heartbeat_timeout=600, handshake_burst=1000)
    server = HubServer(Hub(broker=broker, **options))
    await server.start()
    try:
        for n in range(5):
            await server.hub.publish("t", n)
        broker.gate.set()
        async with websockets.connect(server.url) as ws:  # learn the topic's epoch
            await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
            while (frame := json.loads(await ws.recv()))["type"] != "subscribed":
                pass
        cursor = {"epoch": frame["epoch"], "offset": 2}
        broker.gate.clear()
        broker.reads = 0
        clients = [asyncio.create_task(resume(server.url, cursor)) for _ in range(JOINERS)]
        await eventually(lambda: server.hub.connection_count == JOINERS, what="all connected")
        await asyncio.sleep(0.2)  # their subscribes are read and waiting on the held read
        broker.gate.set()
        results = await asyncio.gather(*clients)
        assert results == [[3, 4, 5]] * JOINERS  # each got the replay, exactly once
        assert broker.reads < JOINERS // 4  # shared (one per read in flight when they came)
    finally:
        await server.stop()
