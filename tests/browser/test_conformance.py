"""The conformance scenarios of docs/protocol.md, for the browser client, in real Chromium.

Same list, same hub, same chaos proxy as tests/conformance/ (the Python client).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page

from tether import Hub, Incoming
from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..conformance.scenarios import scenario
from ..conftest import RefusingServer, StartHub
from ..redis_fixtures import BROKERS, hubs_on
from ..support import BrokenHub, Recorder, T, bad_message, eventually, hub_options
from .conftest import BrowserClient

SCALED = {
    "backoffBase": T,
    "backoffCap": 5 * T,
    "connectTimeout": 20 * T,
    "stableAfter": 50 * T,
    "circuitCooldown": 20 * T,
    "persistCursors": False,
}


#: The async-predicate form of ``eventually`` reads better in these page-driven tests.
until = eventually


@pytest.fixture(params=BROKERS)
async def start_hub(request: pytest.FixtureRequest) -> AsyncIterator[StartHub]:
    """Every scenario on both brokers (tests/redis_fixtures.py)."""
    async for start in hubs_on(request.param):
        yield start


@pytest.fixture
def proxy(chaos: ChaosProxy) -> ChaosProxy:
    """The shared chaos proxy (tests/conftest.py), under the name these tests use."""
    return chaos


def via(proxy: ChaosProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/ws"


async def started(page: Page, url: str, *topics: str, **options: Any) -> BrowserClient:
    client = BrowserClient(page)
    await client.start(url, **{**SCALED, **options})
    for topic in topics:
        await client.subscribe(topic)

    async def live() -> bool:
        return all([await client.is_live(t) for t in topics])

    await until(live, what="subscribed")
    return client


@scenario(1)
async def test_s01_first_connect(page: Page, hub_server: HubServer) -> None:
    client = await started(page, hub_server.url, "t")
    rec = await client.rec()
    assert [s[1] for s in rec["states"]] == ["connecting", "connected"]
    assert rec["reconnects"] == 0
    m = await client.metrics()
    # A first connect is not a reconnect: no attempt is counted against the backoff.
    assert (m["reconnectAttempts"], m["totalReconnects"]) == (0, 0)


@scenario(2)
async def test_s02_cut_resume(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    client = await started(page, via(proxy), "t")
    total = 200

    async def publish() -> None:
        for n in range(total):
            await hub_server.hub.publish("t", n)
            await asyncio.sleep(T / 20)

    publisher = asyncio.create_task(publish())
    cuts = 0
    while not publisher.done():
        await asyncio.sleep(3 * T)
        if await client.state() == "connected":
            cuts += proxy.cut() > 0
    await publisher

    async def complete() -> bool:
        return len(await client.offsets("t")) >= total

    await until(complete, what="all messages")

    async def all_back() -> bool:
        return (await client.rec())["reconnects"] == cuts and await client.state() == "connected"

    await until(all_back, what="a reconnect per cut")
    rec = await client.rec()
    assert await client.offsets("t") == list(range(1, total + 1))
    assert [d["data"] for d in rec["deliveries"]] == list(range(total))
    assert cuts >= 3 and rec["reconnects"] >= 3 and rec["resyncs"] == []


@scenario(3)
async def test_s03_zero_before_drop(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    client = await started(page, via(proxy), "t")
    proxy.refuse()
    proxy.cut()
    await until(lambda: _is(client, "reconnecting"), what="reconnecting")
    for n in range(5):
        await hub_server.hub.publish("t", n)
    proxy.heal()
    await until(lambda: _count(client, "t", 5), what="replay")
    rec = await client.rec()
    assert [d["offset"] for d in rec["deliveries"]] == [1, 2, 3, 4, 5]
    assert all(d["recovered"] for d in rec["deliveries"])


@scenario(4)
async def test_s04_half_open(page: Page, start_hub: StartHub) -> None:
    server = await start_hub(heartbeat_interval=2 * T, heartbeat_timeout=2 * T)
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    client = await started(page, via(proxy), "t")
    await server.hub.publish("t", "before")
    await until(lambda: _count(client, "t", 1), what="first")
    stalled_at = time.monotonic()
    proxy.stall()
    await server.hub.publish("t", "during")
    await until(lambda: _is(client, "reconnecting"), what="stall detected")
    assert time.monotonic() - stalled_at <= 4 * T + 3 * T
    assert (await client.metrics())["heartbeatFailures"] == 1
    proxy.heal()
    await server.hub.publish("t", "after")
    await until(lambda: _count(client, "t", 3), what="recovered")
    rec = await client.rec()
    assert [d["data"] for d in rec["deliveries"]] == ["before", "during", "after"]
    await proxy.stop()


@scenario(5)
async def test_s05_restart_gap(page: Page, start_hub: StartHub) -> None:
    first = await start_hub()
    client = await started(page, first.url, "t")
    for n in range(5):
        await first.hub.publish("t", n)
    await until(lambda: _count(client, "t", 5), what="first epoch")
    old_epoch = (await client.rec())["deliveries"][0]["epoch"]
    await first.stop()
    second = await start_hub(Hub(**hub_options(port=first.port)))
    for n in range(3):
        await second.hub.publish("t", n)
    await until(lambda: _count(client, "t", 8), what="new epoch")
    rec = await client.rec()
    assert rec["resyncs"] == [["t", [{"epoch": old_epoch, "from": 6, "to": None, "reason": None}]]]
    assert [d["offset"] for d in rec["deliveries"][5:]] == [1, 2, 3]


@scenario(6)
async def test_s06_history_too_short(page: Page, start_hub: StartHub) -> None:
    server = await start_hub(history_size=5)
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    client = await started(page, via(proxy), "t")
    for n in range(2):
        await server.hub.publish("t", n)
    await until(lambda: _count(client, "t", 2), what="live")
    epoch = (await client.rec())["deliveries"][0]["epoch"]
    proxy.refuse()
    proxy.cut()
    for n in range(2, 20):
        await server.hub.publish("t", n)
    proxy.heal()
    await until(lambda: _count(client, "t", 7), what="retained history")
    rec = await client.rec()
    assert rec["resyncs"] == [["t", [{"epoch": epoch, "from": 3, "to": 15, "reason": None}]]]
    assert await client.offsets("t") == [1, 2, 16, 17, 18, 19, 20]
    await proxy.stop()


@scenario(7)
async def test_s07_outbox_flush(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    seen: list[Any] = []

    @hub_server.hub.on("note")
    async def note(msg: Incoming) -> int:
        seen.append(msg.data)
        return len(seen)

    client = await started(page, via(proxy), "t")
    proxy.refuse()
    proxy.cut()
    await until(lambda: _is(client, "reconnecting"), what="offline")
    await page.evaluate(
        "() => { window.sends = [...Array(10).keys()].map((n) => window.client.send('note', n)); }"
    )
    assert (await client.metrics())["outboxSize"] == 10
    proxy.heal()
    results = await page.evaluate("() => Promise.all(window.sends)")
    assert seen == list(range(10))
    assert results == list(range(1, 11))


@scenario(8)
async def test_s08_retry_dedup(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    runs: list[str] = []

    @hub_server.hub.on("charge")
    async def charge(msg: Incoming) -> dict[str, Any]:
        runs.append(msg.id)
        if len(runs) == 1:
            proxy.cut()
            await asyncio.sleep(T)
        return {"charged": msg.data}

    await started(page, via(proxy), "t")
    result = await page.evaluate("() => window.client.send('charge', 42)")
    assert result == {"charged": 42}
    assert len(runs) == 1
    assert hub_server.hub.stats.sends_deduplicated >= 1


class FixedHintHub(Hub):
    hint_ms = int(15 * T * 1000)

    def restart_reason(self) -> str:
        return json.dumps({"retry_after_ms": self.hint_ms, "message": "server restarting"})


@scenario(9)
async def test_s09_restart_hint(page: Page, start_hub: StartHub) -> None:
    first = await start_hub(FixedHintHub(**hub_options()))
    client = await started(page, first.url, "t", backoffBase=T / 50, backoffCap=T / 50)
    await first.stop()
    await start_hub(Hub(**hub_options(port=first.port)))

    async def back() -> bool:
        return (await client.metrics())["totalReconnects"] == 1

    await until(back, what="reconnected")
    states = (await client.rec())["states"]
    times = {to: at for _, to, at in states}
    assert times["connected"] - times["reconnecting"] >= FixedHintHub.hint_ms / 1000 - T / 10
    assert (await client.metrics())["failedReconnects"] == 0


@scenario(10)
async def test_s10_circuit_breaker(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    client = await started(
        page, via(proxy), "t", maxAttempts=3, circuitCooldown=10 * T, stableAfter=T
    )

    async def stable() -> bool:
        return (await client.metrics())["reconnectAttempts"] == 0

    await until(stable, what="stable")
    proxy.refuse()
    proxy.cut()
    await until(lambda: _is(client, "failed"), what="circuit open")
    m = await client.metrics()
    assert m["isCircuitOpen"] and m["circuitBreakerTrips"] == 1 and m["failedReconnects"] == 3

    async def probed() -> bool:
        return (await client.metrics())["circuitBreakerTrips"] == 2

    await until(probed, what="half-open probe")
    # Timed by the client's own transitions (performance.now() in the page): measuring
    # from the test, after a poll and a round trip, flaked (0.982 >= 0.99).
    states = (await client.rec())["states"]
    opened_at = next(t for _, to, t in states if to == "failed")
    probed_at = next(t for frm, _, t in states if frm == "failed")
    assert probed_at - opened_at >= 10 * T - 0.005  # a timer never fires early
    proxy.heal()
    await page.evaluate("() => window.client.reconnect()")
    await until(lambda: _is(client, "connected"), timeout=5 * T, what="manual reconnect")


@scenario(11)
async def test_s11_auth_no_loop(page: Page, refusing_server: RefusingServer) -> None:
    client = BrowserClient(page)
    await client.start(refusing_server.url, **{**SCALED, "circuitCooldown": 1000 * T})
    await until(lambda: _is(client, "failed"), what="failed")
    await asyncio.sleep(10 * T)
    assert len(refusing_server.attempts) == 1
    assert "1008" in (await client.metrics())["lastError"]


@scenario(12)
async def test_s12_bad_input(page: Page, hub_server: HubServer) -> None:
    bystander = Recorder(hub_server.url)
    await bystander.subscribed("t")
    client = await started(page, hub_server.url, "t")
    code = await page.evaluate(
        "() => window.client.send('nobody.listens', {}).then(() => 'ok', (e) => e.code)"
    )
    assert code == "no_handler"
    await hub_server.hub.publish("t", "still here")
    await until(lambda: _count(client, "t", 1), what="delivery after nack")
    await until(lambda: bystander.offsets("t") == [1], what="the bystander's delivery")
    assert await _is(client, "connected")
    assert (await client.metrics())["totalReconnects"] == 0
    await bystander.close()


@scenario(13)
async def test_s13_undecodable_message_is_reported_and_stepped_over(
    page: Page, broken_hub: BrokenHub
) -> None:
    # The offset is reported as an "undeliverable" gap, the cursor moves past it, the hub
    # is told, nothing reconnects (a frame JSON.parse refuses: invalid UTF-8 would make
    # Chromium fail the whole connection, which is why the hub refuses it at the door).
    broken_hub.frames = [bad_message(1, b"[1,]"), bad_message(2, b'{"ok":true}')]
    client = await started(page, broken_hub.url, "t")
    await until(lambda: _count(client, "t", 1), what="delivery")
    assert await client.offsets("t") == [2]
    rec = await client.rec()
    assert rec["resyncs"] == [
        ["t", [{"epoch": "E", "from": 1, "to": 1, "reason": "undeliverable"}]]
    ]
    await until(lambda: len(broken_hub.reports) == 1, what="the report")
    assert broken_hub.reports[0]["offset"] == 1
    metrics = await client.metrics()
    assert metrics["state"] == "connected" and metrics["totalReconnects"] == 0
    assert metrics["undeliverable"] == 1


async def _is(client: BrowserClient, state: str) -> bool:
    return await client.state() == state


async def _count(client: BrowserClient, topic: str, n: int) -> bool:
    return len(await client.offsets(topic)) >= n


@scenario(14)
async def test_s14_rewind(page: Page, hub_server: HubServer, proxy: ChaosProxy) -> None:
    hub = hub_server.hub
    for n in range(1, 6):
        await hub.publish("t", n)
    client = BrowserClient(page)
    await client.start(via(proxy), **{**SCALED, "persistCursors": True})
    await client.subscribe("t", rewind=3)
    await until(lambda: _count(client, "t", 3), what="the rewind")
    rec = await client.rec()
    assert [(d["offset"], d["data"], d["recovered"]) for d in rec["deliveries"]] == [
        (3, 3, False),  # never missed: not "recovered"
        (4, 4, False),
        (5, 5, False),
    ]
    await hub.publish("t", 6)
    await until(lambda: _count(client, "t", 4), what="live")
    proxy.cut()

    async def back() -> bool:
        return (await client.rec())["reconnects"] == 1 and await client.state() == "connected"

    await until(back, what="the reconnect")
    await hub.publish("t", 7)
    await until(lambda: _count(client, "t", 5), what="after the cut")
    await asyncio.sleep(5 * T)  # a rewind sent again would show here as repeats
    assert await client.offsets("t") == [3, 4, 5, 6, 7]
    assert (await client.rec())["resyncs"] == []

    # A new page (its state gone) with the old page's cursor stored: the rewind still
    # gives it the current value, where the stored cursor would have given it nothing.
    await page.evaluate("() => window.client.close()")
    stored = await page.evaluate("() => JSON.stringify(Object.entries(sessionStorage))")
    assert '\\"offset\\":7' in stored, stored
    await page.reload()
    client = BrowserClient(page)
    await client.start(via(proxy), **{**SCALED, "persistCursors": True})
    await client.subscribe("t", rewind=1)
    await until(lambda: _count(client, "t", 1), what="the current value")
    assert await client.offsets("t") == [7]
