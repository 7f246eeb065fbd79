"""The browser client under issue 14's limits (twins of tests/integration/test_pressure.py)."""

from __future__ import annotations

from playwright.async_api import Browser

from ..conftest import StartHub
from ..support import eventually
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
