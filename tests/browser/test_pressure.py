"""The browser client under issue 14's limits (twins of tests/integration/test_pressure.py)."""

from __future__ import annotations

from playwright.async_api import Browser

from ..conftest import StartHub
from ..support import counting_hub, eventually
from .conftest import BrowserClient


async def test_an_oversize_send_fails_once_instead_of_reconnecting_in_a_loop(
    browser: Browser, start_hub: StartHub
) -> None:
    server = await start_hub(max_frame_bytes=1024)
    page = await (await browser.new_context()).new_page()
    await page.goto(server.http_url + "/healthz")
    client = BrowserClient(page)
    # Queued before the first connection: refused once the hub's limit is known.
    await page.evaluate(
        """async (url) => {
            const t = await import('/tether.js');
            window.client = t.connect(url, { persistCursors: false });
            window.queued = window.client.send('e', 'x'.repeat(2000))
                .then(() => 'ok', (e) => e.constructor.name);
        }""",
        server.url,
    )

    async def connected() -> bool:
        return await client.state() == "connected"

    await eventually(connected, what="connected")
    assert await page.evaluate("() => window.queued") == "MessageTooBig"
    online = await page.evaluate(
        "() => window.client.send('e', 'y'.repeat(2000))"
        ".then(() => 'ok', (e) => e.constructor.name)"
    )
    assert online == "MessageTooBig"
    metrics = await client.metrics()
    assert metrics["totalReconnects"] == 0 and metrics["outboxSize"] == 0
    await page.evaluate("() => window.client.close()")


async def test_an_outbox_flush_past_the_burst_is_paced_and_all_acked_in_order(
    browser: Browser, start_hub: StartHub
) -> None:
    hub, handled = counting_hub(inbound_rate=200.0, inbound_burst=40)
    server = await start_hub(hub)
    page = await (await browser.new_context()).new_page()
    await page.goto(server.http_url + "/healthz")
    results = await page.evaluate(
        """async (url) => {
            const t = await import('/tether.js');
            const client = t.connect(url, { persistCursors: false });
            for (let n = 0; n < 60; n++) client.subscribe(`t${n}`, () => {});
            const sends = [];
            for (let n = 0; n < 300; n++) sends.push(client.send('n', n));
            const acked = await Promise.all(sends);
            const live = await new Promise((resolve) => {
                const check = () => {
                    if ([...Array(60).keys()].every((n) => client.isLive(`t${n}`))) resolve(true);
                    else setTimeout(check, 20);
                };
                check();
            });
            client.close();
            return { acked, live };
        }""",
        server.url,
    )
    assert results["acked"] == list(range(300))
    assert results["live"] is True
    assert handled == list(range(300))
