"""The hub's side of liveness: a silent client is closed (1011) and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import websockets
from websockets.exceptions import ConnectionClosedError

from tether.chaos import ChaosProxy
from tether.client.state import State
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import Recorder, T, eventually


async def test_silent_client_is_closed_after_its_deadline(hub_server: HubServer) -> None:
    # A client that reads (it sees the hub's pings) but never answers.
    async with websockets.connect(hub_server.url) as ws:
        opened = time.monotonic()
        pings = 0
        with contextlib.suppress(ConnectionClosedError):
            async for raw in ws:
                pings += json.loads(raw)["type"] == "ping"
        closed_after = time.monotonic() - opened
    assert ws.close_code == 1011 and ws.close_reason == "heartbeat timeout"
    assert pings >= 1
    c = hub_server.hub.config
    deadline = c.heartbeat_interval + c.heartbeat_timeout
    assert deadline <= closed_after <= deadline + 3 * T, closed_after
    assert hub_server.hub.stats.heartbeat_timeouts == 1


async def test_answering_client_stays_and_metrics_are_exposed(hub_server: HubServer) -> None:
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    await hub_server.hub.publish("t", 1)
    await eventually(lambda: len(rec.deliveries) == 1, what="delivery")
    await eventually(lambda: rec.client.metrics.rtt is not None, what="an RTT sample")
    await eventually(lambda: (rec.client.metrics.last_heartbeat or 0) > 0, what="heartbeat")
    await asyncio.sleep(10 * T)  # several heartbeat deadlines
    assert rec.client.metrics.successful_connects == 1
    assert hub_server.hub.stats.heartbeat_timeouts == 0
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        text = (await http.get("/metrics")).text
    assert "tether_connections 1.0" in text
    assert "tether_publishes_total 1.0" in text
    assert "tether_heartbeat_timeouts_total 0.0" in text
    await rec.close()


async def test_client_waking_from_sleep_probes_instead_of_declaring_the_hub_dead(
    start_hub: StartHub,
) -> None:
    # A machine that slept (or a process that was stopped): on waking, every timer of the
    # client fires late at once, and the silence it sees is its own, not the hub's. It
    # must probe, and keep the connection when the hub answers, not drop it as dead.
    hub_server = await start_hub(heartbeat_interval=3 * T, heartbeat_timeout=30 * T)
    proxy = ChaosProxy(target=("127.0.0.1", hub_server.port))
    await proxy.start()
    skew = [0.0]
    rec = Recorder(f"ws://127.0.0.1:{proxy.port}/ws", clock=lambda: time.monotonic() + skew[0])
    await rec.subscribed("t")
    # Hold every frame while the client wakes, so the first thing it runs is a heartbeat
    # check far past its deadline (the hub's pings cannot arrive first and hide it).
    proxy.stall()
    skew[0] = 100.0
    await asyncio.sleep(3 * T + 3 * T)  # the next check has run, late: it sent a probe
    proxy.resume()  # well within the probe's timeout (30 T) and the hub's deadline (33 T)
    await hub_server.hub.publish("t", 1)
    await eventually(lambda: len(rec.deliveries) == 1, what="a delivery after the wake")
    await asyncio.sleep(35 * T)  # past the probe's deadline and the hub's
    m = rec.client.metrics
    assert (m.heartbeat_failures, m.successful_connects) == (0, 1)
    assert rec.state_sequence() == [State.CONNECTING, State.CONNECTED]
    await rec.close()
    await proxy.stop()
