"""Plan 000 (the odds and scrape monitor): its checklist, line by line, in real Chromium
against ``examples/oddsmonitor/app.py`` run as its own process, through real faults
(server SIGKILL and restart, a chaos proxy that stalls the link).

examples/oddsmonitor/README.md maps each line to the configuration and to the test here.
Intervals are scaled with the test time unit ``T`` through the app's TETHER_* variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import websockets
from playwright.async_api import Browser, ConsoleMessage, Page, Request

from tether.chaos import ChaosProxy
from tether.config import ClientConfig

from ..processes import ExampleApp, free_port
from ..support import Recorder, T, eventually

#: Playwright waits (ms). Generous: the page's own backoff decides how soon it is back.
DEADLINE = 60_000
#: The queries' REST endpoints.
ENDPOINTS = ("/api/events", "/api/scheduler/history", "/api/scrape/runs", "/api/scrape/runs/active")
RECONNECTED = "[useWebSocket] Reconnected"
#: The indicator's dot colours (computed style), by the plan's state.
#: Retry fast and never give up, for tests where the page must come back by itself: with
#: 10 attempts at most 0.5 s apart the page could open its circuit (and wait a minute)
#: before a SIGKILLed server on a loaded machine is serving again.
QUICK = {
    "TETHER_BACKOFF_BASE": str(T),
    "TETHER_BACKOFF_CAP": str(5 * T),
    "TETHER_MAX_ATTEMPTS": "10000",
}
GREEN, YELLOW, GREY, RED = (
    "rgb(34, 197, 94)",
    "rgb(234, 179, 8)",
    "rgb(156, 163, 175)",
    "rgb(239, 68, 68)",
)


class Monitor(ExampleApp):
    """The example app as a process: started, SIGKILLed and started again on one port."""

    def __init__(
        self,
        *,
        odds_every: float = 0,
        scrape_every: float = 0,
        scrape_step: float = T,
        data: Path | None = None,
        ws_url: str | None = None,
        **env: str,
    ) -> None:
        flags = ["--odds-every", str(odds_every), "--scrape-every", str(scrape_every)]
        flags += ["--scrape-step", str(scrape_step)]
        if data is not None:
            flags += ["--data", str(data)]
        if ws_url is not None:
            flags += ["--ws-url", ws_url]
        super().__init__("oddsmonitor", *flags, ready="/api/events", metrics="/rt/metrics", env=env)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rt/ws"

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient() as http:
            response = await http.get(self.url + path)
            response.raise_for_status()
            return response.json()


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Monitor]:
    app = Monitor(**options)
    await app.start()
    try:
        yield app
    finally:
        await app.kill()


@dataclasses.dataclass
class Dashboard:
    """A page on the dashboard, with the REST requests it made and its console lines."""

    page: Page
    requests: list[str] = dataclasses.field(default_factory=list)
    logs: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def count(self, path: str) -> int:
        return self.requests.count(path)

    def counts(self) -> dict[str, int]:
        return {path: self.count(path) for path in ENDPOINTS}

    def reconnect_logs(self) -> int:
        return self.logs.count(RECONNECTED)

    async def state(self) -> str:
        state: str = await self.page.evaluate("() => window.oddsmonitor.client.state")
        return state

    async def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = await self.page.evaluate(
            "() => window.oddsmonitor.client.metrics()"
        )
        return metrics

    async def status(self, status: str) -> None:
        """Wait until the header's indicator shows the plan's ``status``."""
        await self.page.wait_for_selector(
            f"header .connection-status[data-status={status}]", timeout=DEADLINE
        )

    async def look(self) -> dict[str, Any]:
        """What the indicator shows: label, tooltip, the dot's size, colour and animation."""
        look: dict[str, Any] = await self.page.evaluate(
            """() => {
                const el = document.querySelector('header .connection-status');
                const dot = getComputedStyle(el.querySelector('.dot'));
                return { status: el.dataset.status, state: el.dataset.state, title: el.title,
                         label: el.querySelector('.label').textContent,
                         color: dot.backgroundColor, width: dot.width, height: dot.height,
                         animation: dot.animationName, retry: !!el.querySelector('button.retry') };
            }"""
        )
        return look

    async def close(self) -> None:
        await self.page.close()
        assert self.errors == [], self.errors


async def dashboard(browser: Browser, app: Monitor) -> Dashboard:
    page = await browser.new_page()
    dash = Dashboard(page)

    def on_request(request: Request) -> None:
        path = urlparse(request.url).path
        if request.method == "GET" and path in ENDPOINTS:
            dash.requests.append(path)

    def on_console(message: ConsoleMessage) -> None:
        dash.logs.append(message.text)

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: dash.errors.append(str(exc)))
    await page.goto(app.url + "/")
    await dash.status("connected")
    await page.wait_for_selector("#events tr[data-event-id]", timeout=DEADLINE)
    return dash


async def test_fastapi_backend_with_rest_endpoints_and_the_hub_publishing_from_background_tasks(
    browser: Browser,
) -> None:
    async with running(odds_every=2 * T, scrape_every=5 * T, scrape_step=T) as app:
        events = await app.get("/api/events")
        assert len(events) == 6 and {"id", "name", "home", "draw", "away"} <= set(events[0])
        for path in ENDPOINTS:
            assert isinstance(await app.get(path), list)
        # The hub is mounted in the app: a Tether client (not the page) hears both topics.
        rec = Recorder(app.ws_url)
        await rec.subscribed("odds", "scrape")
        dash = await dashboard(browser, app)

        def kinds() -> set[str]:
            return {d.data["type"] for d in rec.deliveries}

        expected = {"odds_update", "scrape_started", "scrape_progress", "scrape_completed"}
        await eventually(lambda: expected <= kinds(), what=f"{expected}, seen {kinds()}")
        for d in rec.deliveries:
            assert set(d.data) == {"type", "timestamp", "data"}  # the plan's envelope
            assert d.data["timestamp"].endswith("+00:00")
        # What the background tasks did is what the server reports and the page shows.
        runs = await app.get("/api/scrape/runs")
        assert runs[-1]["status"] == "completed" and runs[-1]["trigger"] == "scheduler"
        await dash.page.wait_for_selector(
            f"#runs tr[data-run-id='{runs[-1]['id']}'][data-status=completed]", timeout=DEADLINE
        )
        assert await dash.page.locator("#events tr[data-event-id]").count() == 6
        assert await dash.page.locator("#history li").count() >= 2
        await rec.close()
        await dash.close()


async def test_on_reconnect_fires_only_after_a_drop_never_on_first_connect(
    browser: Browser,
) -> None:
    async with running(**QUICK) as app:
        dash = await dashboard(browser, app)
        await dash.page.wait_for_timeout(1000 * 10 * T)  # connected a while: no callback
        assert dash.reconnect_logs() == 0
        assert (await dash.metrics())["totalReconnects"] == 0
        await app.kill()  # a drop: the server dies
        await dash.status("connecting")
        await app.start()
        await eventually(lambda: dash.reconnect_logs() == 1, what="the reconnect logged")
        await dash.status("connected")
        # Another drop (as if the network failed), another callback; still one per drop.
        await dash.page.evaluate("() => window.oddsmonitor.client.disconnect()")
        await eventually(lambda: dash.reconnect_logs() == 2, what="the second reconnect logged")
        assert (await dash.metrics())["totalReconnects"] == 2
        await dash.close()


async def test_retry_counter_reset_after_30_s_stable(browser: Browser) -> None:
    stable = 30 * T  # the plan's 30 s, scaled
    async with running(TETHER_STABLE_AFTER=str(stable), **QUICK) as app:
        dash = await dashboard(browser, app)
        assert await dash.page.evaluate("() => window.oddsmonitor.client.config.stableAfter") == (
            stable
        )
        await dash.page.evaluate(
            """() => {
                const client = window.oddsmonitor.client;
                window.samples = [];  // [time, retry counter, state]
                client.addEventListener('reconnect', () => {
                    window.reconnectedAt = performance.now() / 1000; });
                setInterval(() => window.samples.push([performance.now() / 1000,
                    client.metrics().reconnectAttempts, client.state]), 50);
            }"""
        )
        await app.kill()
        await dash.page.wait_for_function(
            "() => window.oddsmonitor.client.metrics().failedReconnects >= 2", timeout=DEADLINE
        )
        await app.start()
        await dash.status("connected")
        await dash.page.wait_for_function(
            "() => window.samples.some(([t, n]) => t >= window.reconnectedAt && n === 0)",
            timeout=DEADLINE,
        )
        at: float = await dash.page.evaluate("() => window.reconnectedAt")
        samples: list[list[Any]] = await dash.page.evaluate("() => window.samples")
        # Connected but not yet stable: the counter still holds the failed attempts.
        young = [n for t, n, s in samples if at <= t < at + stable - T and s == "connected"]
        assert young and all(n >= 3 for n in young), young
        # Reset, and only once the connection had been stable for stableAfter.
        first_zero = min(t for t, n, _ in samples if t >= at and n == 0)
        assert first_zero >= at + stable - T
        await dash.close()


async def test_manual_reconnect(browser: Browser) -> None:
    # The next automatic attempt is 42-60 s away (60 s +-30 %, capped): only reconnect()
    # can bring the page back sooner.
    env = {
        "TETHER_BACKOFF_BASE": "60",
        "TETHER_BACKOFF_CAP": "60",
        "TETHER_JITTER": "proportional",
    }
    async with running(**env) as app:
        dash = await dashboard(browser, app)
        assert await app.metric("tether_connections_opened_total") == 1
        # While connected: a fresh session at once, seen by the server.
        await dash.page.evaluate("() => window.oddsmonitor.reconnect()")
        await eventually(
            lambda: _metric_is(app, "tether_connections_opened_total", 2), what="a new session"
        )
        await eventually(lambda: dash.reconnect_logs() == 1, what="the reconnect logged")
        await dash.status("connected")
        # While waiting out a long backoff: now, not when the timer says.
        await app.kill()
        await dash.status("connecting")
        due: float = await dash.page.evaluate(
            "() => Date.now() + window.oddsmonitor.client.metrics().nextRetryIn * 1000"
        )
        waits: float = (await dash.metrics())["nextRetryIn"]
        assert waits > 30, waits
        await app.start()
        await dash.page.evaluate("() => window.oddsmonitor.reconnect()")
        await dash.status("connected")
        assert await dash.page.evaluate("() => Date.now()") < due
        assert dash.reconnect_logs() == 2
        await dash.close()


async def test_on_reconnect_queries_invalidated_and_active_runs_refetched(
    browser: Browser, tmp_path: Path
) -> None:
    async with running(data=tmp_path / "monitor.json", scrape_step=10 * T, **QUICK) as app:
        dash = await dashboard(browser, app)
        await eventually(lambda: min(dash.counts().values()) == 1, what="every query fetched")
        await dash.page.wait_for_timeout(1000 * 10 * T)
        assert dash.counts() == dict.fromkeys(ENDPOINTS, 1)  # none extra on first load
        # A scrape run, followed live (progress messages update the cache).
        await dash.page.click("#scrape-now")
        await dash.page.wait_for_selector("#active [data-run-id='1']", timeout=DEADLINE)
        await dash.page.wait_for_function(
            "() => Number(document.querySelector('#active [data-run-id]')?.dataset.done) >= 1",
            timeout=DEADLINE,
        )
        before = dash.counts()
        # The server dies mid-run; the restarted one has marked the run interrupted. No
        # message says so (the hub restarted with it): only the refetch on reconnect shows it.
        await app.kill()
        await dash.status("connecting")
        await app.start()
        await dash.status("connected")
        await eventually(
            lambda: all(dash.count(p) > before[p] for p in ENDPOINTS),
            what="every query refetched after the reconnect",
            explain=lambda: _said(f"before {before}, now {dash.counts()}"),
        )
        assert dash.reconnect_logs() == 1
        await dash.page.wait_for_selector("#active .none", timeout=DEADLINE)  # no active run
        await dash.page.wait_for_selector(
            "#runs tr[data-run-id='1'][data-status=interrupted]", timeout=DEADLINE
        )
        await dash.page.wait_for_selector("#history li:has-text('interrupted')", timeout=DEADLINE)
        assert (await app.get("/api/scrape/runs/active")) == []
        await dash.close()


async def test_odds_updates_invalidate_events(browser: Browser) -> None:
    async with running(odds_every=5 * T) as app:
        rec = Recorder(app.ws_url)
        await rec.subscribed("odds")
        dash = await dashboard(browser, app)
        first = dash.count("/api/events")
        await eventually(lambda: len(rec.deliveries) >= 3, what="three odds updates")
        # Each update is a refetch of /api/events (the query invalidated), not a patch.
        await eventually(
            lambda: dash.count("/api/events") >= first + 2, what="events refetched per update"
        )
        update = rec.deliveries[-1].data
        assert update["type"] == "odds_update"
        row = f"#events tr[data-event-id='{update['data']['id']}']"
        await dash.page.wait_for_function(
            "([row, v]) => Number(document.querySelector(row).dataset.version) >= v",
            arg=[row, update["data"]["version"]],
            timeout=DEADLINE,
        )

        async def table_matches_server() -> bool:
            shown = await dash.page.evaluate(
                """() => [...document.querySelectorAll('#events tr[data-event-id]')].map(
                    (tr) => [Number(tr.dataset.eventId), Number(tr.dataset.version),
                             ...['home', 'draw', 'away'].map(
                                (k) => tr.querySelector('.' + k).textContent)])"""
            )
            server = [
                [e["id"], e["version"], *(f"{e[k]:.2f}" for k in ("home", "draw", "away"))]
                for e in await app.get("/api/events")
            ]
            return bool(shown == server)

        await eventually(table_matches_server, what="the page's odds equal the server's")
        await rec.close()
        await dash.close()


async def test_connection_status_dot_in_the_dashboard_header(browser: Browser) -> None:
    # Three attempts, about 0.5, 1 and 1 s apart (proportional jitter): long enough to
    # see "Connecting…" before the retries are exhausted.
    env = {
        "TETHER_MAX_ATTEMPTS": "3",
        "TETHER_BACKOFF_BASE": str(5 * T),
        "TETHER_BACKOFF_CAP": str(10 * T),
        "TETHER_JITTER": "proportional",
    }
    async with running(**env) as app:
        dash = await dashboard(browser, app)
        look = await dash.look()
        assert (look["label"], look["title"], look["color"]) == ("Connected", "Connected", GREEN)
        assert (look["width"], look["height"], look["retry"]) == ("8px", "8px", False)
        await app.kill()
        await dash.status("connecting")
        look = await dash.look()
        assert (look["label"], look["title"], look["color"]) == (
            "Connecting…",
            "Connecting…",
            YELLOW,
        )
        assert look["animation"] == "pulse" and not look["retry"]
        await dash.status("error")  # retries exhausted
        look = await dash.look()
        assert (look["state"], look["label"], look["color"]) == ("failed", "Connection failed", RED)
        assert look["retry"] and look["title"].startswith("Connection failed: "), look
        await app.start()
        await dash.page.click("header .connection-status button.retry")
        await dash.status("connected")
        assert (await dash.look())["color"] == GREEN
        # Tether's disconnected / closed (the hub ended the session, or the app closed it).
        await dash.page.evaluate("() => window.oddsmonitor.client.close()")
        await dash.status("disconnected")
        look = await dash.look()
        assert (look["label"], look["title"], look["color"]) == (
            "Disconnected",
            "Disconnected",
            GREY,
        )
        assert look["animation"] == "none" and not look["retry"]
        await dash.close()


async def test_30_s_ping_5_s_pong_timeout_detects_a_stalled_link(browser: Browser) -> None:
    # The plan's numbers by default, as the hub tells every client in its welcome.
    async with running() as app, websockets.connect(app.ws_url) as ws:
        welcome = json.loads(await ws.recv())
        assert (welcome["heartbeat_ms"], welcome["heartbeat_timeout_ms"]) == (30_000, 5_000)
    # Scaled: the page dials through a chaos proxy, which then stalls the link (no FIN, no
    # RST: bytes just stop). Only the heartbeat can tell; the page reconnects by itself.
    port = free_port()
    proxy = ChaosProxy(target=("127.0.0.1", port))
    await proxy.start()
    env = {
        "TETHER_HEARTBEAT_INTERVAL": str(20 * T),
        "TETHER_HEARTBEAT_TIMEOUT": str(10 * T),
        **QUICK,
    }
    app = Monitor(ws_url=f"ws://127.0.0.1:{proxy.port}/rt/ws", **env)
    app.port = port
    await app.start()
    try:
        dash = await dashboard(browser, app)
        await dash.page.wait_for_function(
            "() => window.oddsmonitor.client.metrics().rtt !== null", timeout=DEADLINE
        )
        assert proxy.stall() == 1
        proxy.heal()  # new connections pass; the stalled one stays dead
        await dash.page.wait_for_function(
            "() => window.oddsmonitor.client.metrics().heartbeatFailures >= 1", timeout=DEADLINE
        )
        await dash.status("connected")
        await eventually(lambda: dash.reconnect_logs() == 1, what="the reconnect logged")
        # The hub's side found the silent link dead too.
        await eventually(
            lambda: _metric_at_least(app, "tether_heartbeat_timeouts_total", 1),
            what="the hub's heartbeat timeout",
        )
        await dash.close()
    finally:
        await app.kill()
        await proxy.stop()


async def test_1_to_30_s_backoff_10_retries_are_tethers_defaults(browser: Browser) -> None:
    plan = {"backoffBase": 1.0, "backoffFactor": 2.0, "backoffCap": 30.0, "maxAttempts": 10}
    defaults = ClientConfig()
    assert (defaults.backoff_base, defaults.backoff_cap, defaults.max_attempts) == (1, 30, 10)
    async with running() as app:
        served = (await app.get("/api/realtime"))["options"]
        assert {k: served[k] for k in plan} == plan
        dash = await dashboard(browser, app)
        config = await dash.page.evaluate("() => window.oddsmonitor.client.config")
        assert {k: config[k] for k in plan} == plan
        await dash.close()
    # The same schedule, scaled (base T, cap 4 T), run to the end with the server down.
    base, cap = T, 4 * T
    async with running(TETHER_BACKOFF_BASE=str(base), TETHER_BACKOFF_CAP=str(cap)) as app:
        dash = await dashboard(browser, app)
        await dash.page.evaluate(
            """() => {
                const client = window.oddsmonitor.client;
                window.waits = [];  // [retry counter, delay, state] for each scheduled attempt
                client.addEventListener('retry', (e) => window.waits.push(
                    [client.metrics().reconnectAttempts, e.detail.in, client.state]));
            }"""
        )
        await app.kill()
        await dash.status("error")
        waits: list[list[Any]] = await dash.page.evaluate("() => window.waits")
        backoff = [(n, delay) for n, delay, state in waits if state != "failed"]
        assert [n for n, _ in backoff] == list(range(10))  # ten retries, then the circuit
        for n, delay in backoff:
            assert 0 <= delay <= min(cap, base * 2**n) + 1e-9, (n, delay)
        metrics = await dash.metrics()
        assert (metrics["failedReconnects"], metrics["circuitBreakerTrips"]) == (10, 1)
        await dash.close()


async def test_a_retry_that_works_after_the_retries_are_exhausted(browser: Browser) -> None:
    # The circuit's own probe is a minute away (circuitCooldown 60, the default): the
    # Retry button is what brings the page back.
    env = {
        "TETHER_MAX_ATTEMPTS": "3",
        "TETHER_BACKOFF_BASE": str(T),
        "TETHER_BACKOFF_CAP": str(5 * T),
    }
    async with running(**env) as app:
        dash = await dashboard(browser, app)
        await dash.page.evaluate(
            """() => { window.seen = [];
                window.oddsmonitor.client.addEventListener('statechange',
                    (e) => window.seen.push(e.detail.to)); }"""
        )
        await app.kill()
        await dash.status("error")
        await app.start()
        await dash.page.wait_for_timeout(1000 * 10 * T)
        assert await dash.state() == "failed"  # back up, but nothing retries by itself yet
        await dash.page.click("header .connection-status button.retry")
        await dash.status("connected")
        seen: list[str] = await dash.page.evaluate("() => window.seen")
        assert seen[-3:] == ["failed", "reconnecting", "connected"], seen
        metrics = await dash.metrics()
        assert metrics["circuitBreakerTrips"] == 1 and metrics["isCircuitOpen"] is False
        assert dash.reconnect_logs() == 1
        await dash.close()


async def _metric_is(app: Monitor, name: str, value: float) -> bool:
    return await app.metric(name) == value


async def _metric_at_least(app: Monitor, name: str, value: float) -> bool:
    return await app.metric(name) >= value


async def _said(text: str) -> str:
    return text
