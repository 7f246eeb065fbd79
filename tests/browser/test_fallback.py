"""The HTTP fallback in real Chromium: WebSocket upgrades refused -> server-sent events and
POST, cuts survived on it, back to WebSocket when upgrades pass again; no gap, no
duplicate at either switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute

from tether import Incoming
from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..support import T, eventually
from .conftest import BrowserClient

SCALED = {
    "backoffBase": T,
    "backoffCap": 5 * T,
    "connectTimeout": 50 * T,
    "persistCursors": False,
    "fallbackAfter": 2,
    "wsProbeInterval": 10 * T,
}


class Upgrades:
    """Whether the page's WebSocket upgrades get through (Playwright routes each one)."""

    def __init__(self) -> None:
        self.blocked = True
        self.refused = 0

    async def route(self, ws: WebSocketRoute) -> None:
        if self.blocked:
            self.refused += 1
            await ws.close(code=4999, reason="upgrade refused by a proxy")
        else:
            ws.connect_to_server()


@pytest.fixture
async def proxied_page(
    browser: Browser, hub_server: HubServer, chaos: ChaosProxy
) -> AsyncIterator[tuple[Page, Upgrades]]:
    """A page on the chaos proxy's origin (the fallback's fetches are same-origin)."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    upgrades = Upgrades()
    await page.route_web_socket(lambda url: url.endswith("/ws"), upgrades.route)
    await page.goto(f"http://127.0.0.1:{chaos.port}/healthz")
    yield page, upgrades
    await context.close()
    assert errors == [], errors


async def transport(client: BrowserClient) -> str | None:
    via: str | None = (await client.metrics())["transport"]
    return via


async def test_refused_upgrades_fall_back_survive_cuts_and_come_back(
    proxied_page: tuple[Page, Upgrades], hub_server: HubServer, chaos: ChaosProxy
) -> None:
    page, upgrades = proxied_page
    handled: list[int] = []

    @hub_server.hub.on("n")
    async def record(msg: Incoming) -> int:
        handled.append(int(msg.data))
        return int(msg.data)

    client = BrowserClient(page)
    await client.start(f"ws://127.0.0.1:{chaos.port}/ws", **SCALED)
    await client.subscribe("t")

    async def on(via: str) -> bool:
        return await transport(client) == via and await client.is_live("t")

    await eventually(lambda: on("sse"), what="live on the fallback")
    assert upgrades.refused >= SCALED["fallbackAfter"]
    total = 80
    publishing = asyncio.create_task(publish(hub_server, total))
    sent = await client.call("() => Promise.all([1, 2, 3].map((n) => window.client.send('n', n)))")
    assert sent == [1, 2, 3]
    await asyncio.sleep(5 * T)
    assert chaos.cut() >= 1  # the event stream (and any POST) dies mid-publish
    await eventually(lambda: reconnects(client, 1), what="a reconnect after the cut")
    assert await transport(client) == "sse"  # upgrades are still refused
    await eventually(lambda: on("sse"), what="live on the fallback again")
    upgrades.blocked = False
    await eventually(lambda: on("websocket"), what="back on WebSocket once upgrades pass")
    assert (await client.rec())["reconnects"] == 2
    await publishing
    await eventually(lambda: _all(client, total), what="every offset once, in order")
    rec = await client.rec()
    assert rec["resyncs"] == []
    assert sorted(handled) == [1, 2, 3]  # each send ran once
    assert await client.state() == "connected"


async def test_transport_sse_is_used_even_where_websockets_pass(
    proxied_page: tuple[Page, Upgrades], hub_server: HubServer, chaos: ChaosProxy
) -> None:
    page, upgrades = proxied_page
    upgrades.blocked = False
    client = BrowserClient(page)
    await client.start(f"ws://127.0.0.1:{chaos.port}/ws", **{**SCALED, "transport": "sse"})
    await client.subscribe("t")
    await eventually(lambda: client.is_live("t"), what="live")
    await publish(hub_server, 5)
    await eventually(lambda: _all(client, 5), what="all five")
    assert await transport(client) == "sse" and upgrades.refused == 0
    await asyncio.sleep(20 * T)  # past a probe interval: "sse" does not probe
    assert await transport(client) == "sse"
    metrics = await client.metrics()
    assert metrics["rtt"] is not None  # heartbeats run over it too


async def reconnects(client: BrowserClient, n: int) -> bool:
    return bool((await client.rec())["reconnects"] >= n)


async def publish(hub: HubServer, count: int) -> None:
    for n in range(count):
        await hub.hub.publish("t", n)
        await asyncio.sleep(T / 2)


async def _all(client: BrowserClient, n: int) -> Any:
    return await client.offsets("t") == list(range(1, n + 1))
