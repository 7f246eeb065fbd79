"""The main job: the demo dashboard, driven by its own chaos controls in Chromium.

Every control must end in recovery with zero gaps on the counters. Screenshots of
each state are kept in test-artifacts/ (one is in the README).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page

from tether.demo import DemoBackend, create_demo_app
from tether.server.serve import EmbeddedServer

from ..processes import Proc, free_port, serving, spawn
from ..support import T, eventually

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def demo() -> AsyncIterator[tuple[DemoBackend, str]]:
    backend = DemoBackend(
        hub_options={
            "allowed_origins": "*",
            "heartbeat_interval": 5 * T,
            "heartbeat_timeout": 5 * T,
            "restart_spread": 5 * T,
        },
        client_options={"backoffBase": 2 * T, "backoffCap": 5 * T, "connectTimeout": 10 * T},
        down_for=5 * T,
    )
    await backend.start()
    config = uvicorn.Config(
        create_demo_app(backend), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    web = EmbeddedServer(config)

    task = asyncio.create_task(web.serve())
    await eventually(lambda: web.started, what="demo web server")
    port = web.servers[0].sockets[0].getsockname()[1]
    yield backend, f"http://127.0.0.1:{port}/"
    web.should_exit = True
    await task
    await backend.stop()


async def counters(page: Page) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#counters tbody tr')].map(
            (tr) => [tr.dataset.topic, {
                published: tr.querySelector('.published').textContent,
                delivered: tr.querySelector('.delivered').textContent,
                gaps: tr.querySelector('.gaps').textContent }]))"""
    )
    return rows


async def caught_up(page: Page) -> bool:
    rows = await counters(page)
    return bool(rows) and all(
        r["gaps"] == "0" and r["published"] == r["delivered"] and r["delivered"] != "0"
        for r in rows.values()
    )


async def wait_caught_up(page: Page, what: str) -> None:

    deadline = time.monotonic() + 150 * T
    while not await caught_up(page):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: counters never caught up: {await counters(page)}")
        await page.wait_for_timeout(100)


async def reconnects(page: Page) -> int:
    count: int = await page.evaluate("() => window.tether.getMetrics().totalReconnects")
    return count


async def wait_reconnected(page: Page, before: int) -> None:
    """The connection dropped and came back: the counter, not the transient
    ``reconnecting`` state, which a fast reconnect can leave between two DOM polls."""
    await page.wait_for_function(
        "(n) => window.tether.getMetrics().totalReconnects > n",
        arg=before,
        timeout=100 * T * 1000,
    )
    await page.wait_for_selector("tether-status[state=connected]", timeout=100 * T * 1000)


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


async def test_every_chaos_control_ends_with_zero_gaps(
    browser: Browser, demo: tuple[DemoBackend, str]
) -> None:
    _backend, url = demo
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await page.wait_for_selector("tether-status[state=connected]")
    await wait_caught_up(page, "first load")
    await shot(page, "connected")

    before = await reconnects(page)
    await page.get_by_role("button", name="Cut the connection").click()
    await shot(page, "reconnecting")
    await wait_reconnected(page, before)
    await wait_caught_up(page, "after cut")

    before = await reconnects(page)
    await page.get_by_role("button", name="Stall it", exact=False).click()
    await page.wait_for_selector(
        "tether-status[state=reconnecting]", state="attached", timeout=100 * T * 1000
    )  # a stall lasts until the heartbeat deadline: long enough to be seen
    await shot(page, "stalled")
    await wait_reconnected(page, before)
    await wait_caught_up(page, "after stall")

    before = await reconnects(page)
    await page.get_by_role("button", name="Restart the server").click()
    await wait_reconnected(page, before)
    await wait_caught_up(page, "after restart")
    await shot(page, "recovered")

    metrics = await page.evaluate("() => window.tether.getMetrics()")  # the debug helpers
    assert metrics["totalReconnects"] >= 3 and metrics["resyncs"] == 0
    assert metrics["messagesRecovered"] > 0
    assert errors == []
    await page.close()


async def test_the_demo_serves_the_hubs_metrics_at_the_printed_url(
    demo: tuple[DemoBackend, str],
) -> None:
    _backend, url = demo
    async with httpx.AsyncClient() as http:
        reply = await http.get(url + "metrics")
    assert reply.status_code == 200
    assert "tether_connections" in reply.text and "tether_publishes_total" in reply.text


async def test_a_page_left_open_recovers_when_the_demo_itself_is_restarted(
    browser: Browser,
) -> None:
    # `tether demo` killed (a crash, or Ctrl-C) and started again: the page's real-time
    # link is the chaos proxy, on a fixed port, so the open page finds the new demo.
    port = free_port()
    first = await start_demo(port)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"http://127.0.0.1:{port}/")
        await wait_caught_up(page, "first demo")
        before = await reconnects(page)
        await first.stop(signal.SIGKILL)
        await asyncio.sleep(20 * T)  # down for a while: the page retries meanwhile
        second = await start_demo(port)
        try:
            await page.wait_for_function(
                "(n) => window.tether.getMetrics().totalReconnects > n", arg=before, timeout=60_000
            )
            await page.wait_for_selector("tether-status[state=connected]", timeout=60_000)

            # A new process, a new epoch: what the old one published after the kill is
            # reported as lost ("+?": the old epoch's tail, extent unknown), and the counts
            # start over from the page's first offset of the new epoch, and agree.
            async def agree() -> bool:
                rows = await counters(page)
                return bool(rows) and all(
                    r["gaps"] == "0+?" and r["published"] == r["delivered"] != "0"
                    for r in rows.values()
                )

            await eventually(agree, timeout=150 * T, what="counts agree in the new epoch")
        finally:
            await second.stop()
    finally:
        await context.close()
        await first.stop(signal.SIGKILL)


async def start_demo(port: int) -> Proc:
    return await serving(
        await spawn("demo", "--port", str(port)), f"http://127.0.0.1:{port}/demo/stats"
    )


async def test_the_demo_lists_the_five_examples_each_with_a_command_that_runs_it(
    browser: Browser, demo: tuple[DemoBackend, str]
) -> None:
    page = await browser.new_page()
    await page.goto(demo[1])
    commands = await page.eval_on_selector_all(
        "#examples li code:last-child", "(els) => els.map((e) => e.textContent)"
    )
    names = [c.split("NAME=")[1].split()[0] for c in commands if c.startswith("make example")]
    assert len(names) == 5 and len(set(names)) == 5
    # Each is a real example with its README, and none in the tree is left out.
    assert set(names) == examples_in_tree()
    await page.close()


def examples_in_tree() -> set[str]:
    """The examples/<name>/ folders that hold an app.py and a README.md."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    return {p.parent.name for p in examples.glob("*/app.py") if (p.parent / "README.md").is_file()}
