"""The README's browser page: served by the hub at /, live in Chromium, also under a mount,
and its modules importable from another allowed origin (CORS)."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI
from playwright.async_api import Browser, Page

from tether import Hub
from tether.server.app import STATIC
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import hub_options
from .test_conformance import until

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_quotes_the_served_page_verbatim() -> None:
    assert (STATIC / "index.html").read_text() in (ROOT / "README.md").read_text()


async def shows(page: Page, server: HubServer, text: str) -> None:
    async def listed() -> bool:
        items = await page.locator("#prices li").all_text_contents()
        return any(text in item for item in items)

    async def connected() -> bool:
        return (
            await page.evaluate(
                "() => document.querySelector('tether-status').getAttribute('state')"
            )
            == "connected"
        )

    await until(connected, what="the status dot says connected")
    await server.hub.publish("prices", {"px": 97000})
    await until(listed, what=f"{text} listed")


async def test_the_hub_serves_the_readme_page_and_it_goes_live(
    browser: Browser, hub_server: HubServer
) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(hub_server.http_url + "/")
    await shows(page, hub_server, '#1 {"px":97000}')
    assert errors == []
    await page.close()


async def test_the_page_finds_its_hub_under_a_mount(browser: Browser, start_hub: StartHub) -> None:
    hub = Hub(**hub_options())
    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/rt", hub.asgi())
    server = HubServer(hub, app=app, ws_path="/rt/ws")  # the README's FastAPI setup
    await server.start()
    try:
        page = await browser.new_page()
        await page.goto(server.http_url + "/rt/")
        await shows(page, server, '#1 {"px":97000}')
        await page.close()
    finally:
        await server.stop()


async def test_a_page_on_another_allowed_origin_imports_the_client(
    browser: Browser, start_hub: StartHub
) -> None:
    hub_server = await start_hub(allowed_origins="")  # the default: loopback pages only
    page = await browser.new_page()
    # localhost and 127.0.0.1 are different origins; a loopback hub allows loopback pages.
    await page.goto(f"http://localhost:{hub_server.port}/healthz")
    kind = await page.evaluate(
        f"async () => typeof (await import('http://127.0.0.1:{hub_server.port}/tether.js')).connect"
    )
    assert kind == "function"
    await page.close()


async def test_modules_load_cross_origin_for_allowed_origins(start_hub: StartHub) -> None:
    server = await start_hub(allowed_origins="https://dashboard.example.com")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        allowed = await http.get("/tether.js", headers={"Origin": "https://dashboard.example.com"})
        other = await http.get("/tether.js", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://dashboard.example.com"
    assert "access-control-allow-origin" not in other.headers
