"""Plan 003 (stream overlays "Landale"): what it lists, in real Chromium against
``examples/landale/app.py`` run as its own process, through real server kills.

examples/landale/README.md maps each line to the configuration and to the test here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, Page

from ..processes import ExampleApp

DEADLINE = 60_000
#: The nine HealthMetrics fields of the plan, as the client names them.
HEALTH = {
    "state": "connectionState",
    "reconnectAttempts": "reconnectAttempts",
    "totalReconnects": "totalReconnects",
    "failedReconnects": "failedReconnects",
    "successfulConnects": "successfulConnects",
    "heartbeatFailures": "heartbeatFailures",
    "circuitBreakerTrips": "circuitBreakerTrips",
    "lastHeartbeat": "lastHeartbeat",
    "isCircuitOpen": "isCircuitOpen",
}


class Landale(ExampleApp):
    def __init__(self, **env: str) -> None:
        super().__init__("landale", "--interval", "0.2", ready="/overlay/config", env=env)


@pytest.fixture
async def landale() -> AsyncIterator[Landale]:
    # A quick breaker for the test (the plan's 5 minutes is the default: see the last test).
    app = Landale(TETHER_CIRCUIT_COOLDOWN="3", TETHER_BACKOFF_CAP="0.5")
    await app.start()
    yield app
    await app.kill()


async def overlay(browser: Browser, app: Landale, query: str = "") -> Page:
    page = await browser.new_page()
    await page.goto(app.url + "/" + query)
    await page.wait_for_selector("#overlay[data-state=connected]", timeout=DEADLINE)
    await page.wait_for_function(
        "() => document.querySelector('#followers').textContent !== '—'", timeout=DEADLINE
    )
    await page.evaluate(
        """() => { window.seen = [];
            window.landale_socket.client.addEventListener('statechange',
                (e) => window.seen.push(e.detail.to)); }"""
    )
    return page


async def state(page: Page) -> str:
    value: str = await page.evaluate("() => window.landale_socket.getState()")
    return value


async def indicator_shown(page: Page) -> bool:
    shown: bool = await page.evaluate(
        "() => getComputedStyle(document.querySelector('tether-status')).display !== 'none'"
    )
    return shown


async def test_five_states_and_a_circuit_breaker_that_opens_after_5_failures_and_probes(
    browser: Browser, landale: Landale
) -> None:
    page = await overlay(browser, landale)
    await landale.kill()
    await page.wait_for_function(
        "() => window.landale_socket.getState() === 'failed'", timeout=DEADLINE
    )
    metrics = await page.evaluate("() => window.landale_socket.getMetrics()")
    assert metrics["isCircuitOpen"] and metrics["circuitBreakerTrips"] == 1
    assert metrics["failedReconnects"] == 5  # max_attempts 5: the plan's threshold
    await landale.start()
    # Nobody touches the page: the breaker probes after its cooldown, and the link is back.
    await page.wait_for_selector("#overlay[data-state=connected]", timeout=DEADLINE)
    seen = await page.evaluate("() => window.seen")
    assert seen == ["reconnecting", "failed", "reconnecting", "connected"]
    # The two states before: the first connect went DISCONNECTED -> CONNECTING -> CONNECTED.
    assert (await page.evaluate("() => window.landale_socket.getMetrics()"))[
        "successfulConnects"
    ] == 2
    await page.close()


async def test_the_nine_health_metrics_are_counted(browser: Browser, landale: Landale) -> None:
    page = await overlay(browser, landale)
    await page.evaluate("() => window.landale_socket.disconnect()")
    await page.wait_for_function(
        "() => window.landale_socket.getMetrics().totalReconnects === 1", timeout=DEADLINE
    )
    metrics = await page.evaluate("() => window.landale_socket.getMetrics()")
    assert set(HEALTH) <= set(metrics)
    assert metrics["state"] == "connected" and metrics["successfulConnects"] == 2
    assert metrics["lastHeartbeat"] is not None and metrics["isCircuitOpen"] is False
    await page.close()


async def test_graceful_degradation_keeps_the_last_data_marked_stale(
    browser: Browser, landale: Landale
) -> None:
    page = await overlay(browser, landale)
    await landale.kill()
    await page.wait_for_selector("#overlay[data-stale]", timeout=DEADLINE)
    last = await page.locator("#followers").text_content()
    await asyncio.sleep(1)
    assert await page.locator("#followers").text_content() == last != "—"  # still shown
    await landale.start()
    await page.wait_for_selector("#overlay:not([data-stale])", timeout=DEADLINE)
    await page.close()


async def test_the_indicator_shows_only_in_debug_or_when_degraded(
    browser: Browser, landale: Landale
) -> None:
    page = await overlay(browser, landale)
    assert not await indicator_shown(page)  # healthy: a clean overlay
    debug = await overlay(browser, landale, "?debug=true")
    assert await indicator_shown(debug)
    await landale.kill()
    await page.wait_for_function(
        "() => getComputedStyle(document.querySelector('tether-status')).display !== 'none'",
        timeout=DEADLINE,
    )
    await page.close()
    await debug.close()


async def test_window_landale_socket_helpers(browser: Browser, landale: Landale) -> None:
    page = await overlay(browser, landale)
    helpers = await page.evaluate("() => Object.keys(window.landale_socket)")
    assert {"getMetrics", "getState", "reconnect", "disconnect"} <= set(helpers)
    await landale.kill()
    await page.wait_for_function(
        "() => window.landale_socket.getState() === 'failed'", timeout=DEADLINE
    )
    await landale.start()
    await page.evaluate("() => window.landale_socket.reconnect()")  # before the cooldown
    await page.wait_for_selector("#overlay[data-state=connected]", timeout=DEADLINE)
    await page.close()


async def test_the_overlay_settings_are_the_plans_by_default() -> None:
    app = Landale()
    await app.start()
    try:
        async with httpx.AsyncClient() as http:
            config = (await http.get(app.url + "/overlay/config")).json()
        # Max delay 30 s for overlays, 5 failures open the breaker, it probes after 5 min.
        assert (config["backoffBase"], config["backoffCap"]) == (1.0, 30.0)
        assert (config["maxAttempts"], config["circuitCooldown"]) == (5, 300.0)
    finally:
        await app.kill()
