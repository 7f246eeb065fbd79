"""The browser client's ``connected`` event: every welcome, with the hub's id for the
connection (the ``session`` its logs name), and whether it is a reconnect."""

from __future__ import annotations

import logging

import pytest
from playwright.async_api import Page

from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..support import T, eventually


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
