"""Plan 001 (the agent orchestrator's dashboard): what it lists, in real Chromium against
``examples/orchestrator/app.py`` run as its own process, through real faults (server
kills, the chaos proxy's cuts and stalls, refused tokens).

examples/orchestrator/README.md maps each line to the configuration and to the test here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import websockets
from playwright.async_api import Browser, BrowserContext, Page, Request
from websockets.exceptions import ConnectionClosed

from tether.chaos import ChaosProxy

from ..processes import EXAMPLES, ExampleApp
from ..support import T, eventually

APP = EXAMPLES / "orchestrator" / "app.py"
SECRET = "plan-001-test-secret-plan-001-test-secret"
DEADLINE = 60_000
#: Scaled for the tests: the plan's 30 s heartbeat as 1 s, its 16 s cap as 0.5 s.
FAST = {
    "TETHER_JWT_SECRET": SECRET,
    "TETHER_HEARTBEAT_INTERVAL": "1",
    "TETHER_HEARTBEAT_TIMEOUT": "1",
    "TETHER_BACKOFF_BASE": str(T),
    "TETHER_BACKOFF_CAP": str(5 * T),
}


class Orchestrator(ExampleApp):
    def __init__(self, *, interval: float = 0.2, **env: str) -> None:
        flags = ("--interval", str(interval))
        super().__init__("orchestrator", *flags, metrics="/rt/metrics", env={**FAST, **env})


@pytest.fixture
async def orchestrator() -> AsyncIterator[Orchestrator]:
    app = Orchestrator()
    await app.start()
    yield app
    await app.kill()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
    yield context
    await context.close()


async def signed_in(context: BrowserContext, base: str, user: str = "alice") -> Page:
    page = await context.new_page()
    await page.goto(base + "/")
    # The page renders after its module loads its settings: wait for either view (a
    # count() right after goto can run before React has rendered anything).
    await page.wait_for_selector("#login, .badge", timeout=DEADLINE)
    if await page.locator("#login").count():
        await page.select_option("#login select", user)
        await page.click("#login button")
    await page.wait_for_selector(".badge[data-status=connected]", timeout=DEADLINE)
    return page


def counting(page: Page, path: str) -> list[float]:
    """When the page requested ``path`` (a REST endpoint), as it happens."""
    seen: list[float] = []

    def on_request(request: Request) -> None:
        if request.url.split("?")[0].endswith(path):
            seen.append(time.monotonic())

    page.on("request", on_request)
    return seen


async def badge(page: Page) -> str:
    return str(await page.get_attribute(".badge", "data-status"))


def mint(user: str, *, ttl: float, projects: tuple[int, ...] = (1, 2)) -> str:
    claims = {
        "sub": user,
        "exp": int(time.time() + ttl),
        "topics": [f"project.{p}" for p in projects],
    }
    return jwt.encode(claims, SECRET, "HS256")


async def test_jwt_from_localstorage_on_the_handshake(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    assert (await page.evaluate("() => localStorage.getItem('orchestrator.token')")).count(".") == 2
    await page.reload()  # no login view: the token is read from localStorage
    await page.wait_for_selector(".badge[data-status=connected]", timeout=DEADLINE)
    assert await page.locator("#login").count() == 0
    await eventually(lambda: len(orchestrator.logs("connection_opened")) == 2, what="two")
    assert {line["subject"] for line in orchestrator.logs("connection_opened")} == {"alice"}


@pytest.mark.parametrize("token", ["expired", "invalid"])
async def test_an_invalid_or_expired_token_closes_1008_and_the_page_shows_its_login_view(
    context: BrowserContext, orchestrator: Orchestrator, token: str
) -> None:
    page = await context.new_page()
    await page.goto(orchestrator.url + "/healthz-not-here")  # the origin, for localStorage
    bad = mint("alice", ttl=-3600) if token == "expired" else "not.a.jwt"
    await page.evaluate("(t) => localStorage.setItem('orchestrator.token', t)", bad)
    await page.goto(orchestrator.url + "/")
    await page.wait_for_selector("#login #signed-out", timeout=DEADLINE)
    assert "Signed out" in (await page.inner_text("#signed-out"))
    assert await page.evaluate("() => localStorage.getItem('orchestrator.token')") is None
    assert await orchestrator.metric("tether_auth_failures_total") == 1
    await asyncio.sleep(10 * T)  # no retry loop on a refused token
    assert await orchestrator.metric("tether_auth_failures_total") == 1
    await page.click("#login button")  # and signing in again works
    await page.wait_for_selector(".badge[data-status=connected]", timeout=DEADLINE)


async def test_a_connected_event_carries_the_client_id(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    await page.wait_for_function(
        "() => document.querySelector('#client-id').textContent.startsWith('client s-')",
        timeout=DEADLINE,
    )
    shown = (await page.inner_text("#client-id")).removeprefix("client ")
    # The id the server's logs give this connection.
    assert [line["session"] for line in orchestrator.logs("connection_opened")] == [shown]


async def test_per_project_subscribe_and_unsubscribe_with_permissions_from_the_jwt(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    await page.wait_for_selector("[data-project='2'] li", timeout=DEADLINE)
    projects = await page.eval_on_selector_all(
        "[data-project]", "(els) => els.map(e => e.dataset.project)"
    )
    assert projects == ["1", "2"]  # alice's, from her token's claims
    token = await page.evaluate("() => localStorage.getItem('orchestrator.token')")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        assert (await http.get(orchestrator.url + "/api/projects/3/stories")).status_code == 403
    # The hub refuses what her token does not list, however the page asks.
    await page.evaluate("() => window.orchestrator.client.subscribe('project.3', () => {})")
    await page.wait_for_selector("#errors", timeout=DEADLINE)
    assert "forbidden" in await page.inner_text("#errors")
    # Unsubscribing: events for project 1 stop refetching its stories; project 2 goes on.
    first, second = (
        counting(page, "/api/projects/1/stories"),
        counting(page, "/api/projects/2/stories"),
    )
    await page.uncheck("[data-project='1'] input[type=checkbox]")
    await page.wait_for_function(
        "() => !window.orchestrator.client.isLive('project.1')", timeout=DEADLINE
    )
    await asyncio.sleep(5 * T)  # what was in flight lands
    before = len(first)
    await eventually(lambda: len(second) >= 3, timeout=300 * T, what="project 2 refetched 3 times")
    assert len(first) == before
    assert await page.evaluate("() => window.orchestrator.client.isLive('project.2')")


async def test_server_heartbeat_terminates_dead_connections(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    # A connection that reads but never answers a ping (a dead peer, as the hub sees it).
    url = f"ws://127.0.0.1:{orchestrator.port}/rt/ws"
    headers = {"Authorization": f"Bearer {mint('alice', ttl=600)}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
    assert ws.close_code == 1011
    await eventually(lambda: bool(orchestrator.logs("connection_closed")), what="the closing line")
    (closed,) = orchestrator.logs("connection_closed")
    assert closed["close_reason"] == "heartbeat timeout" and closed["subject"] == "alice"
    assert await orchestrator.metric("tether_heartbeat_timeouts_total") == 1
    # And a page behind a half-open link (nothing passes, nothing is closed) notices too,
    # and is back once the link is.
    proxy = ChaosProxy(target=("127.0.0.1", orchestrator.port))
    await proxy.start()
    try:
        page = await signed_in(context, f"http://127.0.0.1:{proxy.port}")
        proxy.stall()
        await page.wait_for_selector(".badge[data-status=connecting]", timeout=DEADLINE)
        proxy.resume()
        await page.wait_for_selector(".badge[data-status=connected]", timeout=DEADLINE)
        metrics = await page.evaluate("() => window.orchestrator.client.metrics()")
        assert metrics["totalReconnects"] >= 1
    finally:
        await proxy.stop()


def plan_options() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("orchestrator_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options: dict[str, Any] = module.client_options()
    return options


async def test_backoff_1_to_16_s_10_attempts_30_percent_jitter_and_a_10_s_connect_timeout(
    context: BrowserContext, orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in FAST:
        monkeypatch.delenv(name, raising=False)
    plan = plan_options()  # what the app serves with no TETHER_* variable set
    assert (plan["backoffBase"], plan["backoffCap"], plan["maxAttempts"]) == (1.0, 16.0, 10)
    assert (plan["jitter"], plan["jitterRatio"], plan["connectTimeout"]) == (
        "proportional",
        0.3,
        10.0,
    )
    # The page's client runs exactly what is served (here scaled by the test's variables).
    page = await signed_in(context, orchestrator.url)
    served = await page.evaluate("() => fetch('/api/config').then(r => r.json())")
    config = await page.evaluate("() => ({ ...window.orchestrator.client.config })")
    assert {k: config[k] for k in served if k != "shared"} == {
        k: v for k, v in served.items() if k != "shared"
    }
    # Ten attempts, then it stops (FAILED) instead of retrying for ever.
    await orchestrator.kill()
    await page.wait_for_selector(".badge[data-status=error]", timeout=DEADLINE)
    metrics = await page.evaluate("() => window.orchestrator.client.metrics()")
    assert metrics["failedReconnects"] == 10 and metrics["isCircuitOpen"]


async def test_an_attempt_that_hangs_times_out_after_the_connect_timeout(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    # A server that accepts TCP and never answers the handshake.
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)
        writer.close()

    blackhole = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    page = await signed_in(context, orchestrator.url)
    try:
        failure = await page.evaluate(
            """async ([url, timeout]) => {
                const t = await import('/rt/tether.js');
                const options = await (await fetch('/api/config')).json();
                const c = t.connect(url, { ...options, shared: false, connectTimeout: timeout,
                                           maxAttempts: 1 });
                await new Promise((r) => c.addEventListener('statechange',
                    (e) => e.detail.to === 'failed' && r()));
                const m = c.metrics();
                c.close();
                return m;
            }""",
            [f"ws://127.0.0.1:{port}/rt/ws", 5 * T],
        )
        assert failure["failedReconnects"] == 1
        assert "connect timeout" in failure["lastError"]
    finally:
        blackhole.close()


async def test_subscriptions_restored_after_reconnect_and_a_manual_retry(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    await orchestrator.kill()
    await page.wait_for_selector(".badge[data-status=error]", timeout=DEADLINE)  # attempts spent
    await orchestrator.start()
    stories = counting(page, "/api/projects/1/stories")
    await page.click("#retry")  # the plan's manual retry, without a reload
    await page.wait_for_selector(".badge[data-status=connected]", timeout=DEADLINE)
    # Nobody subscribed again: the client restored both projects, and their events flow.
    await page.wait_for_function(
        "() => ['project.1', 'project.2'].every((t) => window.orchestrator.client.isLive(t))",
        timeout=DEADLINE,
    )
    await eventually(lambda: len(stories) >= 3, timeout=300 * T, what="project 1's events again")


async def test_tanstack_queries_are_invalidated_on_events_and_on_reconnect(
    context: BrowserContext,
) -> None:
    quiet = Orchestrator(interval=3600)  # no agent events: only a reconnect may refetch
    await quiet.start()
    proxy = ChaosProxy(target=("127.0.0.1", quiet.port))
    await proxy.start()
    try:
        page = await signed_in(context, f"http://127.0.0.1:{proxy.port}")
        await page.wait_for_selector("[data-project='1'] li", timeout=DEADLINE)
        projects, stories = (
            counting(page, "/api/projects"),
            counting(page, "/api/projects/1/stories"),
        )
        await asyncio.sleep(5 * T)
        assert (projects, stories) == ([], [])  # nothing polls
        proxy.cut()
        await eventually(lambda: bool(projects and stories), what="refetched after the reconnect")
        assert (
            await page.evaluate("() => window.orchestrator.client.metrics().totalReconnects") == 1
        )
    finally:
        await proxy.stop()
        await quiet.kill()


async def test_story_events_invalidate_their_queries(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    stories = counting(page, "/api/projects/1/stories")
    await eventually(lambda: len(stories) >= 3, timeout=300 * T, what="refetches on events")
    assert await page.evaluate("() => window.orchestrator.client.metrics().totalReconnects") == 0


async def test_several_tabs_share_one_connection(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    first = await signed_in(context, orchestrator.url)
    second = await signed_in(context, orchestrator.url)  # signed in already: localStorage
    assert await orchestrator.metric("tether_connections") == 1
    for page in (first, second):
        await page.wait_for_selector("[data-project='2'] li", timeout=DEADLINE)


async def test_the_plans_metrics_are_in_metrics(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    await page.wait_for_selector("[data-project='1'] li", timeout=DEADLINE)
    await eventually(
        lambda: _positive(orchestrator.metric("tether_fanout_seconds_count")), what="a broadcast"
    )
    for name in (
        "tether_connections",  # connections by status: open now ...
        "tether_connections_opened_total",  # ... opened ...
        "tether_disconnections_total",  # ... and ended
        "tether_handler_seconds_count",  # message duration
        "tether_heartbeat_timeouts_total",
        "tether_auth_failures_total",
    ):
        assert await orchestrator.metric(name) >= 0, name


async def test_structured_json_logs_with_connection_duration(
    context: BrowserContext, orchestrator: Orchestrator
) -> None:
    page = await signed_in(context, orchestrator.url)
    await page.close()
    await eventually(lambda: bool(orchestrator.logs("connection_closed")), what="the closing line")
    (closed,) = orchestrator.logs("connection_closed")
    assert closed["level"] == "info" and closed["subject"] == "alice"
    assert closed["duration_s"] > 0 and closed["subscriptions"] >= 0
    assert closed["ts"].endswith("Z")


async def _positive(value: Any) -> bool:
    return bool(await value > 0)
