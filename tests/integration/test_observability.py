"""What an operator reads: one structured log line per connection opened and closed (with
its duration and who closed it), and histograms of handler and fan-out time in /metrics."""

from __future__ import annotations

import contextlib
import json
import logging

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError

from tether import Incoming
from tether.logs import JsonFormatter
from tether.server.serve import HubServer

from ..support import Recorder, eventually


def lifecycle(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The hub's log records for ``event``, as its JSON log format writes them."""
    formatter = JsonFormatter()
    records = [r for r in caplog.records if getattr(r, "event", None) == event]
    return [json.loads(formatter.format(r)) for r in records]


async def test_each_connection_logs_its_opening_and_its_closing_with_its_duration(
    hub_server: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.hub")
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    session_id = rec.client.session_id
    await rec.close()
    await eventually(lambda: lifecycle(caplog, "connection_closed"), what="the closing line")
    (opened,) = lifecycle(caplog, "connection_opened")
    assert opened["session"] == session_id  # the client knows the name the logs give it
    (closed,) = lifecycle(caplog, "connection_closed")
    assert opened["session"] == closed["session"] and str(opened["session"]).startswith("s-")
    assert opened["address"] == closed["address"] == "127.0.0.1"
    assert opened["level"] == "info" and opened["logger"] == "tether.hub"
    assert isinstance(closed["duration_s"], float) and closed["duration_s"] > 0
    assert closed["close_code"] is None  # the client closed it, not the hub
    assert closed["subscriptions"] == 1
    assert f"closed after {closed['duration_s']:.1f} s" in str(closed["message"])


async def test_a_connection_the_hub_closes_logs_the_code_and_reason(
    hub_server: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.hub")
    async with websockets.connect(hub_server.url) as ws:  # reads, never answers a ping
        with contextlib.suppress(ConnectionClosedError):
            async for _ in ws:
                pass
    await eventually(lambda: lifecycle(caplog, "connection_closed"), what="the closing line")
    (closed,) = lifecycle(caplog, "connection_closed")
    assert (closed["close_code"], closed["close_reason"]) == (1011, "heartbeat timeout")
    assert "1011 heartbeat timeout" in str(closed["message"])


async def test_handler_and_fan_out_durations_are_histograms_in_metrics(
    hub_server: HubServer,
) -> None:
    hub = hub_server.hub

    @hub.on("echo")
    async def echo(msg: Incoming) -> object:
        return msg.data

    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    assert await rec.client.send("echo", 1) == 1
    await hub.publish("t", 1)
    await eventually(lambda: len(rec.deliveries) == 1, what="delivered")
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        text = (await http.get("/metrics")).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["tether_handler_seconds_count"] == 1
    assert values['tether_handler_seconds_bucket{le="+Inf"}'] == 1
    assert values["tether_fanout_seconds_count"] >= 1
    assert 0 < values["tether_fanout_seconds_sum"] < 1
    await rec.close()
