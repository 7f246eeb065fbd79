"""The browser client's ``connected`` event (every welcome, with the hub's id for the
connection, the ``session`` its logs name, and whether it is a reconnect) and its
``disconnected`` event (every close, with its code)."""

from __future__ import annotations

import logging

import pytest
from playwright.async_api import Browser, Page

from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import T, eventually
from .test_tokens import secure_page


async def test_every_welcome_is_a_connected_event_naming_the_hubs_session(
    page: Page, hub_server: HubServer, chaos: ChaosProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.hub")
    await page.evaluate(
        """async ([url, options]) => {
            const t = await import('/tether.js');
            window.connected = [];
            window.client = t.connect(url, options);
            window.client.addEventListener('connected', (e) => window.connected.push(e.detail));
        }""",
        [f"ws://127.0.0.1:{chaos.port}/ws", {"backoffBase": T, "backoffCap": 5 * T}],
    )
    await eventually(lambda: page.evaluate("() => window.connected.length === 1"), what="one")
    chaos.cut()
    await eventually(lambda: page.evaluate("() => window.connected.length === 2"), what="two")
    events = await page.evaluate("() => window.connected")
    opened = [
        getattr(r, "session", None)
        for r in caplog.records
        if getattr(r, "event", "") == "connection_opened"
    ]
    assert [e["sessionId"] for e in events] == opened
    assert [e["reconnect"] for e in events] == [False, True]
    assert events[0]["sessionId"] != events[1]["sessionId"]
    assert await page.evaluate("() => window.client.sessionId") == events[1]["sessionId"]
    await page.evaluate("() => window.client.close()")
    await eventually(
        lambda: page.evaluate("() => window.client.sessionId === null"),
        what="no session once closed",
    )


async def test_a_refused_token_is_a_disconnected_event_with_1008(
    browser: Browser, start_hub: StartHub
) -> None:
    # What a page needs to send its user to sign in again, without parsing messages.
    server, page = await secure_page(browser, start_hub)
    await page.evaluate(
        """async ([url, token]) => {
            const t = await import('/tether.js');
            window.closes = [];
            window.client = t.connect(url, { token });
            window.client.addEventListener('disconnected', (e) => window.closes.push(e.detail));
        }""",
        [server.url, "not-a-token"],
    )
    await eventually(lambda: page.evaluate("() => window.client.state === 'failed'"), what="FAILED")
    closes = await page.evaluate("() => window.closes")
    assert [(c["code"], c["wasConnected"]) for c in closes] == [(1008, False)]
    assert closes[0]["reason"]  # the hub says why
    await page.evaluate("() => window.client.close()")
