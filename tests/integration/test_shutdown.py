"""Graceful shutdown: 1012 with a randomised retry hint, and the fleet comes back spread out."""

from __future__ import annotations

import asyncio
import json
import time

import websockets

from tether import Hub, State

from ..conftest import StartHub
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
