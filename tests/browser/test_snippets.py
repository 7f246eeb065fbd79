"""Every HTML block in the docs runs in Chromium as written (see tests/snippets.py).

A block is served from a hub's origin, next to the modules it imports (``./tether.js``),
as a reader who copies it next to their hub gets it. It passes when the page shows what
the reader is told it shows once something is published (``EXPECT``), with no error in
the page.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from tether import Hub
from tether.server.serve import HubServer

from ..snippets import Snippet, runnable
from ..support import hub_options
from .test_readme_page import shows

#: (document, section) -> what the page lists after ``publish("prices", {"px": 97000})``.
EXPECT = {("README.md", "In the browser"): '#1 {"px":97000}'}


def test_every_html_block_says_what_it_shows() -> None:
    assert {s.key for s in runnable("html")} == set(EXPECT)


@pytest.mark.parametrize("snippet", runnable("html"), ids=lambda s: s.id)
async def test_the_page_runs_as_written(browser: Browser, snippet: Snippet) -> None:
    hub = Hub(**hub_options())

    async def page_text(request: Request) -> HTMLResponse:
        return HTMLResponse(snippet.text)

    app = Starlette(
        routes=[Route("/snippet.html", page_text), Mount("/", app=hub.asgi())],
        lifespan=hub.lifespan,
    )
    server = HubServer(hub, app=app)
    await server.start()
    try:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(server.http_url + "/snippet.html")
        await shows(page, server, EXPECT[snippet.key])
        assert errors == []
        await page.close()
    finally:
        await server.stop()
