"""Browser-only behaviour: reload resumes from the stored cursor, offline/online signals."""

from __future__ import annotations

import time

from playwright.async_api import Browser

from tether.server.serve import HubServer

from ..support import T
from .conftest import BrowserClient
from .test_conformance import SCALED, until


async def test_reload_resumes_from_stored_cursor_without_resync(
    browser: Browser, hub_server: HubServer
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(hub_server.http_url + "/healthz")
    options = {**SCALED, "persistCursors": True}
    client = BrowserClient(page)
    await client.start(hub_server.url, **options)
    await client.subscribe("t")

    async def live() -> bool:
        return await client.is_live("t")

    await until(live, what="subscribed")
    for n in range(3):
        await hub_server.hub.publish("t", n)

    async def three() -> bool:
        return len(await client.offsets("t")) == 3

    await until(three, what="first three")
    await page.reload()  # pagehide stores the cursor in sessionStorage
    for n in range(3, 5):
        await hub_server.hub.publish("t", n)  # published while the page is gone
    client = BrowserClient(page)
    await client.start(hub_server.url, **options)
    await client.subscribe("t")

    async def two() -> bool:
        return len(await client.offsets("t")) == 2

    await until(two, what="resumed after reload")
    rec = await client.rec()
    assert [(d["offset"], d["data"], d["recovered"]) for d in rec["deliveries"]] == [
        (4, 3, True),
        (5, 4, True),
    ]
    assert rec["resyncs"] == []
    await context.close()


async def test_offline_drops_at_once_and_online_reconnects_at_once(
    browser: Browser, hub_server: HubServer
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(hub_server.http_url + "/healthz")
    # A backoff far longer than the test: only the `online` event can bring it back in time.
    client = BrowserClient(page)
    await client.start(hub_server.url, **{**SCALED, "backoffBase": 300 * T, "backoffCap": 300 * T})
    await client.subscribe("t")

    async def state(value: str) -> bool:
        return await client.state() == value

    await until(lambda: state("connected"), what="connected")
    await context.set_offline(True)
    await until(lambda: state("reconnecting"), timeout=10 * T, what="offline -> reconnecting")
    await page.wait_for_timeout(5 * T * 1000)
    online_at = time.monotonic()
    await context.set_offline(False)
    await until(lambda: state("connected"), timeout=50 * T, what="online -> connected")
    assert time.monotonic() - online_at < 50 * T
    await hub_server.hub.publish("t", "after")

    async def got() -> bool:
        return await client.offsets("t") == [1]

    await until(got, what="delivery after coming back")
    await context.close()


async def test_saved_cursors_stay_bounded_when_the_hub_url_changes_every_run(
    browser: Browser, hub_server: HubServer
) -> None:
    """A dev server on a new port per run must not grow sessionStorage without bound."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(hub_server.http_url + "/healthz")
    kept = await page.evaluate(
        """async () => {
            const { TetherClient } = await import('/tether.js');
            for (let port = 9000; port < 9012; port++) {  // twelve runs, twelve URLs
                const client = new TetherClient(`ws://127.0.0.1:${port}/ws`);
                client._session.subscribe('t', { epoch: 'e', offset: port });  // a cursor to keep
                client._saveCursors();  // what pagehide does
            }
            return Object.keys(sessionStorage).filter((k) => k.startsWith('tether:cursors:'));
        }"""
    )
    assert sorted(kept) == [f"tether:cursors:ws://127.0.0.1:{p}/ws" for p in range(9004, 9012)]
    await context.close()
