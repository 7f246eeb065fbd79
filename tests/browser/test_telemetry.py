"""Client telemetry in Chromium: a page's lifecycle events reach the hub's /metrics."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser

from tether.chaos import ChaosProxy

from ..conftest import StartHub
from ..support import T, eventually
from .conftest import BrowserClient


async def test_a_pages_reconnect_is_counted_at_the_hub(
    browser: Browser, start_hub: StartHub
) -> None:
    server = await start_hub(client_telemetry=True)
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{proxy.port}/healthz")
    client = BrowserClient(page)
    await client.start(
        f"ws://127.0.0.1:{proxy.port}/ws",
        telemetry=True,
        telemetryInterval=5 * T,
        backoffBase=T,
        persistCursors=False,
    )
    await client.subscribe("t")
    await eventually(lambda: client.is_live("t"), what="live")
    proxy.cut()

    async def counted() -> bool:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            text = (await http.get("/metrics")).text
        return (
            'tether_client_events_total{kind="reconnect"} 1.0' in text
            and 'tether_client_events_total{kind="connected"} 2.0' in text
        )

    await eventually(counted, what="the reconnect and both connects counted in /metrics")
    assert server.hub.stats.telemetry_reports >= 1
    await context.close()
    await proxy.stop()
