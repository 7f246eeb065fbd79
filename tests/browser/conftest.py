"""Real Chromium (Debian's, via Playwright's ``executable_path``) against real hubs."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tether.server.serve import HubServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Browser, hub_server: HubServer) -> AsyncIterator[Page]:
    """A page on the hub's origin (so ``import('/tether.js')`` loads the served module)."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(hub_server.http_url + "/healthz")
    yield page
    await context.close()
    assert errors == [], errors


class BrowserClient:
    """A TetherClient running in a page, recording what it reports (like tests.support.Recorder)."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def start(self, url: str, **options: Any) -> None:
        await self.page.evaluate(
            """async ([url, options]) => {
                const t = await import('/tether.js');
                const rec = { deliveries: [], states: [], resyncs: [], errors: [], reconnects: 0 };
                window.rec = rec;
                window.tetherModule = t;
                window.client = t.connect(url, {
                    ...options,
                    onStateChange: (from, to) =>
                        rec.states.push([from, to, performance.now() / 1000]),
                    onReconnect: () => { rec.reconnects += 1; },
                    onResync: (topic, missing) => { rec.resyncs.push([topic, missing]); },
                    onError: async (code, message) => { rec.errors.push(code); },
                });
            }""",
            [url, options],
        )

    async def subscribe(self, topic: str, *, rewind: int = 0) -> None:
        await self.page.evaluate(
            """([topic, rewind]) =>
                window.client.subscribe(topic, (m) => window.rec.deliveries.push(m), { rewind })""",
            [topic, rewind],
        )

    async def rec(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate("() => window.rec")
        return result

    async def offsets(self, topic: str) -> list[int]:
        rec = await self.rec()
        return [d["offset"] for d in rec["deliveries"] if d["topic"] == topic]

    async def state(self) -> str:
        state: str = await self.page.evaluate("() => window.client.state")
        return state

    async def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = await self.page.evaluate("() => window.client.metrics()")
        return metrics

    async def is_live(self, topic: str) -> bool:
        live: bool = await self.page.evaluate("(t) => window.client.isLive(t)", topic)
        return live

    async def call(self, expression: str, *args: Any) -> Any:
        return await self.page.evaluate(expression, list(args) if args else None)


def js(value: Any) -> str:
    return json.dumps(value)
