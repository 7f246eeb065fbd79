"""One connection for many tabs (``connect(url, { shared })``), in real Chromium.

Pages of one browser context share one hub connection, through a SharedWorker or a
leader tab elected with Web Locks; each keeps its own subscriptions, callbacks and
state, and a tab closing (the leader's included) costs the others nothing: every
offset still arrives exactly once, and a send retried across the takeover runs once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from playwright.async_api import Browser, BrowserContext

from tether import Incoming
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import T, eventually
from .conftest import BrowserClient

SECRET = "shared-tabs-secret-shared-tabs-secret"


def token_for(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + 600), "topics": ["t"]}, SECRET)


SCALED = {"backoffBase": T, "backoffCap": 5 * T, "connectTimeout": 50 * T, "persistCursors": False}
WAYS = ["worker", "locks"]


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
    yield context
    await context.close()


class Tab(BrowserClient):
    """A page of the shared context with a shared client subscribed to ``t``."""

    errors: list[str]

    @classmethod
    async def open(cls, context: BrowserContext, hub: HubServer, way: str, *topics: str) -> Tab:
        page = await context.new_page()
        tab = cls(page)
        tab.errors = []
        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        await page.goto(hub.http_url + "/healthz")
        await tab.start(hub.url, shared=way, **SCALED)
        for topic in topics:
            await tab.subscribe(topic)
        await eventually(lambda: tab.live(*topics), what=f"{topics} live in a new tab")
        return tab

    @classmethod
    async def open_as(cls, context: BrowserContext, hub: HubServer, way: str, user: str) -> Tab:
        """A page whose shared client offers ``user``'s token."""
        page = await context.new_page()
        tab = cls(page)
        tab.errors = []
        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        await page.goto(hub.http_url + "/healthz")
        await tab.start(hub.url, shared=way, token=token_for(user), **SCALED)
        return tab

    async def live(self, *topics: str) -> bool:
        return all([await self.is_live(t) for t in topics])


async def hub_connections(hub: HubServer) -> float:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        text = (await http.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("tether_connections "))
    return float(line.split()[1])


async def publish(hub: HubServer, topic: str, count: int, *, pause: float = 0.0) -> None:
    for n in range(count):
        await hub.hub.publish(topic, n)
        if pause:
            await asyncio.sleep(pause)


@pytest.mark.parametrize("way", WAYS)
async def test_three_tabs_share_one_connection_and_each_gets_every_message(
    context: BrowserContext, hub_server: HubServer, way: str
) -> None:
    tabs = [await Tab.open(context, hub_server, way, "t") for _ in range(3)]
    assert await hub_connections(hub_server) == 1.0
    assert [await tab.call("() => window.client.shared") for tab in tabs] == [way] * 3
    await publish(hub_server, "t", 20)
    for tab in tabs:
        await eventually(lambda tab=tab: _offsets(tab, "t", 20), what="all 20 in every tab")
    # Each tab's own subscriptions: one tab leaving a topic does not take it from the others.
    await tabs[0].call("() => window.client.unsubscribe('t')")
    await tabs[1].subscribe("u")
    await eventually(lambda: tabs[1].live("u"), what="a second topic in one tab")
    await publish(hub_server, "t", 5)
    await hub_server.hub.publish("u", "only tab 1")
    for tab in tabs[1:]:
        await eventually(lambda tab=tab: _offsets(tab, "t", 25), what="the rest in the others")
    await eventually(lambda: _offsets(tabs[1], "u", 1), what="u in tab 1")
    assert await tabs[0].offsets("t") == list(range(1, 21))
    assert await tabs[2].offsets("u") == []
    for tab in tabs:
        assert (await tab.rec())["resyncs"] == []
        assert await tab.state() == "connected"
        assert tab.errors == []
    assert await hub_connections(hub_server) == 1.0


@pytest.mark.parametrize("way", WAYS)
async def test_tabs_opened_at_once_each_get_the_current_value_and_every_message(
    context: BrowserContext, hub_server: HubServer, way: str
) -> None:
    # As the README page does, in tabs opened together. A tab must hold its own lock
    # before the connection's owner watches it: requests from two contexts reach the
    # lock manager in either order, and an owner's that came first was granted at once,
    # as if the tab had gone (its subscribe then went unanswered). Each page's own lock
    # request is held back here, so that order happens every time.
    await context.add_init_script(
        """(() => {
            const request = navigator.locks.request.bind(navigator.locks);
            let first = true;
            navigator.locks.request = (name, ...rest) => {
                if (!(first && name.startsWith('tether-tab:'))) return request(name, ...rest);
                first = false;
                return new Promise((r) => setTimeout(r, 300)).then(() => request(name, ...rest));
            };
        })()"""
    )
    await publish(hub_server, "t", 3)
    tabs = []
    for _ in range(3):
        page = await context.new_page()
        await page.goto(hub_server.http_url + "/healthz")
        tab = Tab(page)
        tab.errors = []
        await page.evaluate(
            """async ([url, options]) => {
                const t = await import('/tether.js');
                window.rec = { deliveries: [] };
                window.client = t.connect(url, options);
                window.client.subscribe('t', (m) => window.rec.deliveries.push(m), { rewind: 1 });
            }""",
            [hub_server.url, {**SCALED, "shared": way}],
        )
        tabs.append(tab)
    for tab in tabs:
        await eventually(lambda tab=tab: tab.live("t"), what="every tab live")
    await publish(hub_server, "t", 2)
    for tab in tabs:
        await eventually(
            lambda tab=tab: _equals(tab.offsets("t"), [3, 4, 5]),
            what="the current value, then live",
        )
        # Not rescued by a timed-out first attempt (10 s with the defaults), nor by a
        # heartbeat timeout and a reconnect (45 s).
        m = await tab.metrics()
        assert (m["failedReconnects"], m["successfulConnects"], m["totalReconnects"]) == (0, 1, 0)
    assert await hub_connections(hub_server) == 1.0


@pytest.mark.parametrize("way", WAYS)
async def test_closing_the_tab_that_holds_the_connection_costs_the_others_nothing(
    context: BrowserContext, hub_server: HubServer, way: str
) -> None:
    # With "locks" the first tab leads (holds the socket); with "worker" none does, and
    # closing the first must not stop the worker.
    first = await Tab.open(context, hub_server, way, "t")
    others = [await Tab.open(context, hub_server, way, "t") for _ in range(2)]
    publishing = asyncio.create_task(publish(hub_server, "t", 60, pause=T / 2))
    await asyncio.sleep(10 * T)
    await first.page.close()
    await publishing
    for tab in others:
        await eventually(
            lambda tab=tab: _offsets(tab, "t", 60),
            timeout=300 * T,
            what="every offset once, in order",
            explain=lambda tab=tab: _seen(tab, "t", hub_server),
        )
        assert (await tab.rec())["resyncs"] == []
        assert await tab.state() == "connected"
        assert tab.errors == []
    await eventually(lambda: _equals(hub_connections(hub_server), 1.0), what="one connection left")


async def test_a_send_retried_across_a_leader_takeover_runs_once(
    context: BrowserContext, hub_server: HubServer
) -> None:
    leader = await Tab.open(context, hub_server, "locks", "t")
    follower = await Tab.open(context, hub_server, "locks", "t")
    runs: list[str] = []
    closing: list[asyncio.Task[None]] = []

    @hub_server.hub.on("charge")
    async def charge(msg: Incoming) -> dict[str, Any]:
        runs.append(msg.id)
        if len(runs) == 1:  # the leader tab goes while this runs: the ack is lost with it
            closing.append(asyncio.create_task(leader.page.close()))
            await asyncio.sleep(5 * T)
        return {"charged": msg.data}

    result = await follower.call("() => window.client.send('charge', 42)")
    assert result == {"charged": 42}
    assert closing and len(runs) == 1  # run once: the retry was answered from the dedup window
    assert hub_server.hub.stats.sends_deduplicated == 1
    assert (await follower.metrics())["totalReconnects"] == 1  # through the new leader
    await hub_server.hub.publish("t", "after")
    await eventually(lambda: _offsets(follower, "t", 1), what="the follower, now leading, receives")
    assert follower.errors == []


async def _seen(tab: BrowserClient, topic: str, hub: HubServer) -> str:
    rec = await tab.rec()
    return (
        f"offsets {await tab.offsets(topic)}, state {await tab.state()}, "
        f"resyncs {rec['resyncs']}, metrics {await tab.metrics()}, "
        f"hub connections {await hub_connections(hub)}"
    )


async def _offsets(tab: BrowserClient, topic: str, n: int) -> bool:
    return await tab.offsets(topic) == list(range(1, n + 1))


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


@pytest.mark.parametrize("way", WAYS)
async def test_a_tab_signed_in_as_someone_else_never_rides_on_their_connection(
    context: BrowserContext, start_hub: StartHub, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The hub decides what a connection may see from the token it was opened with.
    caplog.set_level(logging.INFO, logger="tether.hub")
    hub = await start_hub(jwt_secret=SECRET, insecure_dev=False)
    alice, bob = (
        await Tab.open_as(context, hub, way, "alice"),
        await Tab.open_as(context, hub, way, "bob"),
    )
    await eventually(lambda: _equals(bob.state(), "failed"), what="bob refused")
    assert (await bob.metrics())["lastError"].startswith("closed during handshake: 1008")
    assert await alice.state() == "connected" and await hub_connections(hub) == 1.0
    # Alice signs out and bob signs in in her tab, while her connection lingers: bob
    # gets a connection of his own.
    await alice.call("() => window.client.close()")
    await alice.start(hub.url, shared=way, token=token_for("bob"), **SCALED)
    await eventually(lambda: _equals(alice.state(), "connected"), what="bob in alice's tab")
    subjects = [
        getattr(r, "subject", None)
        for r in caplog.records
        if getattr(r, "event", "") == "connection_opened"
    ]
    assert subjects == ["alice", "bob"]
    await eventually(lambda: _equals(hub_connections(hub), 1.0), what="alice's connection closed")
