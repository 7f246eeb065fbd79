"""The browser client with tokens: subprotocol transport, refresh in place, no auth loop."""

from __future__ import annotations

import asyncio
import time

import jwt
from playwright.async_api import Browser, Page

from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import T
from .conftest import BrowserClient
from .test_conformance import SCALED, until

SECRET = "browser-secret-browser-secret-browser"


def make_token(ttl: float) -> str:
    claims = {"sub": "alice", "exp": int(time.time() + ttl), "topics": ["t"]}
    return jwt.encode(claims, SECRET, "HS256")


async def secure_page(browser: Browser, start_hub: StartHub) -> tuple[HubServer, Page]:
    """A hub that requires tokens, and a page on its origin."""
    server = await start_hub(jwt_secret=SECRET, insecure_dev=False, jwt_leeway=0)
    page = await browser.new_page()
    await page.goto(server.http_url + "/healthz")
    return server, page


async def test_token_refreshed_in_place_and_bad_token_does_not_loop(
    browser: Browser, start_hub: StartHub
) -> None:
    server, page = await secure_page(browser, start_hub)
    minted: list[str] = []

    def mint() -> str:
        minted.append(make_token(ttl=2))
        return minted[-1]

    await page.expose_function("mintToken", mint)
    client = BrowserClient(page)
    await page.evaluate("() => { window.getToken = () => window.mintToken(); }")
    await client.start(server.url, **SCALED)
    await page.evaluate("() => { window.client.getToken = window.getToken; }")
    await page.evaluate("() => { window.client.reconnect(); }")  # connect with a minted token
    await client.subscribe("t")

    async def live() -> bool:
        return await client.is_live("t")

    await until(live, what="subscribed with a token")
    before = server.hub.stats.auth_failures
    await asyncio.sleep(4.5)  # past the 2 s tokens: refreshed inside the connection
    await server.hub.publish("t", "still live")

    async def got() -> bool:
        return await client.offsets("t") == [1]

    await until(got, what="delivery after the first token expired")
    assert len(minted) >= 3
    assert server.hub.stats.auth_failures == before
    await page.close()

    # A static bad token: 1008, FAILED, no retry loop.
    page = await browser.new_page()
    await page.goto(server.http_url + "/healthz")
    bad = BrowserClient(page)
    failures = server.hub.stats.auth_failures
    await bad.start(server.url, **{**SCALED, "token": "garbage", "circuitCooldown": 1000 * T})

    async def failed() -> bool:
        return await bad.state() == "failed"

    await until(failed, what="failed on a bad token")
    await asyncio.sleep(10 * T)
    assert server.hub.stats.auth_failures == failures + 1
    await page.close()


async def test_a_forbidden_subscribe_is_reported_and_not_retried_on_reconnect(
    browser: Browser, start_hub: StartHub
) -> None:
    server, page = await secure_page(browser, start_hub)
    client = BrowserClient(page)
    await client.start(server.url, **{**SCALED, "token": make_token(ttl=300)})
    await client.subscribe("t")
    await client.subscribe("projects.99.tasks")

    async def refused() -> bool:
        return (await client.rec())["errors"] == ["forbidden"] and await client.is_live("t")

    await until(refused, what="the refusal reported to onError, 't' live")
    assert server.hub.stats.forbidden == 1
    await page.evaluate("() => window.client.disconnect()")

    async def restored() -> bool:
        return (await client.rec())["reconnects"] == 1 and await client.is_live("t")

    await until(restored, what="'t' restored after a drop")
    assert server.hub.stats.forbidden == 1  # the refused topic was not asked for again
    await page.close()


async def test_a_token_source_that_hangs_fails_the_attempt_and_never_means_fallback(
    browser: Browser, start_hub: StartHub
) -> None:
    server, page = await secure_page(browser, start_hub)
    await page.expose_function("mintToken", lambda: make_token(ttl=600))
    await page.evaluate(
        """async ([url, options]) => {
            const t = await import('/tether.js');
            window.hang = true;  // the app's token endpoint is down: its fetch never settles
            const getToken = () => (window.hang ? new Promise(() => {}) : window.mintToken());
            window.client = t.connect(url, { ...options, getToken });
        }""",
        [
            server.url,
            {
                "backoffBase": T,
                "backoffCap": 2 * T,
                "connectTimeout": 5 * T,
                "transport": "auto",
                "fallbackAfter": 1,
            },
        ],
    )

    async def failed_twice() -> bool:
        m = await page.evaluate("() => window.client.metrics()")
        return bool(m["failedReconnects"] >= 2 and "getToken" in (m["lastError"] or ""))

    await until(failed_twice, what="attempts failing on the token, not blocked by it")
    await page.evaluate("() => { window.hang = false; }")

    async def connected() -> bool:
        return bool(await page.evaluate("() => window.client.state === 'connected'"))

    await until(connected, what="connected once the token source answers")
    # Not one WebSocket was refused, so not the fallback either.
    assert await page.evaluate("() => window.client.metrics().transport") == "websocket"
