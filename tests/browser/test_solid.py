"""tether-solid.js against the real solid-js package from npm (installed by `make test` into
tests/browser/js), rendered by solid-js/web with solid-js/html templates: no build step."""

from __future__ import annotations

import json

from playwright.async_api import Browser, Page

from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from .test_conformance import SCALED, until
from .test_react_query import (
    odds_card_follows_the_link,
    site,  # noqa: F401 (fixture: the hub plus /npm on one origin)
)

IMPORTS = {
    "imports": {
        "solid-js": "/npm/solid-js/dist/solid.js",
        "solid-js/web": "/npm/solid-js/web/dist/web.js",
        "solid-js/html": "/npm/solid-js/html/dist/html.js",
    }
}


async def open_page(browser: Browser, server: HubServer) -> Page:
    page = await browser.new_page()
    await page.goto(server.http_url + "/healthz")
    await page.evaluate("(html) => { document.body.innerHTML = html; }", '<div id="root"></div>')
    # Before any module is imported: the page's import map.
    await page.add_script_tag(content=json.dumps(IMPORTS), type="importmap")
    return page


async def test_solid_signals_render_topic_and_status_and_clean_up(
    browser: Browser,
    site: tuple[HubServer, ChaosProxy],  # noqa: F811
) -> None:
    server, proxy = site
    await server.hub.publish("odds", {"home": 1.95})  # before the page: rewind shows it
    page = await open_page(browser, server)
    await page.evaluate(
        """async ([url, options]) => {
            const Solid = await import('solid-js');
            const { render } = await import('solid-js/web');
            const html = (await import('solid-js/html')).default;
            const { createTetherSignals } = await import('/tether-solid.js');
            const { createTether, createTetherStatus, createTopic } = createTetherSignals(Solid);
            function Odds() {
                const client = createTether(url, options);
                window.client = client;
                const status = createTetherStatus(client);
                const odds = createTopic(client, 'odds', { rewind: 1 });
                return html`<div id="odds" data-state=${() => status().state}
                    data-live=${() => String(odds().live)}
                    >${() => (odds().data === undefined ? '-' : String(odds().data.home))}</div>`;
            }
            window.dispose = render(Odds, document.getElementById('root'));
        }""",
        [f"ws://127.0.0.1:{proxy.port}/ws", SCALED],
    )
    await odds_card_follows_the_link(page, server, proxy)

    # Disposing the owner closes what it opened: the client, and so its connection.
    await page.evaluate("() => window.dispose()")
    assert await page.evaluate("() => window.client.state") == "closed"
    await until(lambda: _no_connections(server), what="the hub sees the close")
    await page.close()


async def _no_connections(server: HubServer) -> bool:
    return server.hub.connection_count == 0
