"""tether-react.js and tether-query.js against the real react, react-dom and
@tanstack/query-core packages from npm (installed by `make test` into tests/browser/js)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from tether import Hub
from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..support import T, hub_options
from .test_conformance import SCALED, until

NPM = Path(__file__).resolve().parent / "js" / "node_modules"


@pytest.fixture
async def site() -> AsyncIterator[tuple[HubServer, ChaosProxy]]:
    """The hub's app plus the npm packages under /npm, on one origin."""
    hub = Hub(**hub_options(history_size=2))
    app = Starlette(routes=[Mount("/npm", StaticFiles(directory=NPM)), Mount("/", hub.asgi())])
    server = HubServer(hub, app=app, ws_path="/ws")
    await server.start()
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    yield server, proxy
    await proxy.stop()
    await server.stop()


async def open_page(browser: Browser, server: HubServer) -> Page:
    page = await browser.new_page()
    await page.goto(server.http_url + "/healthz")
    await page.evaluate("(html) => { document.body.innerHTML = html; }", '<div id="root"></div>')
    await page.add_script_tag(url="/npm/react/umd/react.development.js")
    await page.add_script_tag(url="/npm/react-dom/umd/react-dom.development.js")
    return page


async def test_react_hooks_render_topic_and_status(
    browser: Browser, site: tuple[HubServer, ChaosProxy]
) -> None:
    server, proxy = site
    await server.hub.publish("odds", {"home": 1.95})  # before the page: rewind shows it
    page = await open_page(browser, server)
    await page.evaluate(
        """async ([url, options]) => {
            const { createTetherHooks } = await import('/tether-react.js');
            const { useTether, useTetherStatus, useTopic } = createTetherHooks(window.React);
            const h = window.React.createElement;
            function Odds() {
                const client = useTether(url, options);
                window.client = client;
                const { state } = useTetherStatus(client);
                const { data, live } = useTopic(client, 'odds', { rewind: 1 });
                return h('div', { id: 'odds', 'data-state': state, 'data-live': String(live) },
                         data === undefined ? '-' : String(data.home));
            }
            window.ReactDOM.createRoot(document.getElementById('root')).render(h(Odds));
        }""",
        [f"ws://127.0.0.1:{proxy.port}/ws", SCALED],
    )
    await odds_card_follows_the_link(page, server, proxy)
    await page.close()


async def odds_card_follows_the_link(page: Page, server: HubServer, proxy: ChaosProxy) -> None:
    """What every binding's ``#odds`` card (data-state, data-live, the latest ``home``) must
    show: the value published before the page at once (rewind 1), live updates, stale and
    reconnecting through a cut, then the value published meanwhile."""
    await page.wait_for_selector("#odds[data-state=connected][data-live=true]")
    await page.wait_for_selector("#odds:has-text('1.95')")  # the current value, at once
    await server.hub.publish("odds", {"home": 2.15})
    await page.wait_for_selector("#odds:has-text('2.15')")
    proxy.refuse()
    proxy.cut()
    await page.wait_for_selector("#odds[data-state=reconnecting][data-live=false]")
    await server.hub.publish("odds", {"home": 2.2})
    proxy.heal()
    await page.wait_for_selector("#odds[data-state=connected][data-live=true]")
    await page.wait_for_selector("#odds:has-text('2.2')")


async def test_tanstack_bridge_invalidates_the_right_keys(
    browser: Browser, site: tuple[HubServer, ChaosProxy]
) -> None:
    server, proxy = site
    page = await open_page(browser, server)
    await page.evaluate(
        """async ([url, options]) => {
            // What a bundler substitutes at build time; the npm build reads it at run time.
            window.process = { env: { NODE_ENV: 'production' } };
            const { QueryClient } = await import('/npm/@tanstack/query-core/build/modern/index.js');
            const { connect } = await import('/tether.js');
            const { bridgeQueryClient } = await import('/tether-query.js');
            const qc = new QueryClient();
            for (const key of [['events'], ['scheduler-history'], ['unrelated']]) {
                qc.setQueryData(key, 'fresh');
            }
            const client = connect(url, options);
            client.subscribe('scheduler', () => {});
            window.gaps = [];
            bridgeQueryClient(client, qc, {
                onReconnect: [['events']],
                topics: { scheduler: [['scheduler-history']] },
                onGap: (topic, missing) => window.gaps.push([topic, missing]),
            });
            window.client = client;
            window.invalid = () => Object.fromEntries(
                ['events', 'scheduler-history', 'unrelated'].map(
                    (k) => [k, qc.getQueryState([k]).isInvalidated]));
            window.reset = () => {
                for (const k of ['events', 'scheduler-history', 'unrelated']) {
                    qc.setQueryData([k], 'fresh');
                }
            };
        }""",
        [f"ws://127.0.0.1:{proxy.port}/ws", SCALED],
    )

    async def live() -> bool:
        return bool(await page.evaluate("() => window.client.isLive('scheduler')"))

    await until(live, what="subscribed")
    assert await page.evaluate("() => window.invalid()") == {
        "events": False,
        "scheduler-history": False,
        "unrelated": False,
    }

    # A lossless reconnect: only the onReconnect keys.
    proxy.cut()

    async def reconnected() -> bool:
        return bool((await page.evaluate("() => window.invalid()"))["events"])

    await until(reconnected, what="invalidation on reconnect")
    await until(live, what="resubscribed")
    assert (await page.evaluate("() => window.invalid()"))["scheduler-history"] is False
    await page.evaluate("() => window.reset()")

    # A reconnect with loss on `scheduler` (history holds 2): its keys too.
    proxy.refuse()
    proxy.cut()
    await asyncio.sleep(T)
    for n in range(6):
        await server.hub.publish("scheduler", n)
    proxy.heal()

    async def resynced() -> bool:
        return bool((await page.evaluate("() => window.invalid()"))["scheduler-history"])

    await until(resynced, what="invalidation on resync")
    assert await page.evaluate("() => window.invalid()") == {
        "events": True,
        "scheduler-history": True,
        "unrelated": False,
    }
    gaps = await page.evaluate("() => window.gaps")
    assert gaps and gaps[0][0] == "scheduler" and gaps[0][1][0]["from"] == 1
    assert gaps[0][1][0]["to"] == 4
    await page.close()
