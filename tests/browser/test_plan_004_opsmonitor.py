"""Plan 004 (the Ops monitor's "/ws/updates" resilience plan): its lines, one test each, in
real Chromium against ``examples/opsmonitor/app.py`` run as its own process, through real
faults: server SIGKILLs and restarts, chaos-proxy cuts and stalls, the ``tether chaos`` CLI.

examples/opsmonitor/README.md maps each line to the configuration and to the test here.
The plan's times (30 s heartbeats, 2 s backoff, a 5 s banner delay) are scaled to the
test unit T through the app's environment variables, which is also how they are set in
production.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jwt
import pytest
import websockets
from playwright.async_api import Browser, Page, WebSocketRoute
from websockets.typing import Subprotocol

from tether.backoff import Jitter, backoff_ceiling, backoff_delay
from tether.chaos import ChaosProxy
from tether.client.lifecycle import Failure, Lifecycle
from tether.config import ClientConfig, HubConfig, env_name

from ..processes import EXAMPLES, ExampleApp, free_port, scrape, spawn
from ..support import Recorder, T, eventually

ROOT = Path(__file__).resolve().parents[2]
HERE = EXAMPLES / "opsmonitor"
APP = HERE / "app.py"
CORE = ROOT / "src" / "tether" / "static" / "tether-core.js"
SECRET = "opsmonitor-test-secret-0123456789abcdef"
DEADLINE = 60_000  # ms, for Playwright waits: generous, the page's own timers decide
MESSAGE = "Live updates paused, attempting to reconnect…"
DEBOUNCE = 15 * T  # the plan's 5 s, scaled
#: The plan's times scaled to the test unit (the factor, 1.5, and the rest stay the plan's).
SCALED = {
    "TETHER_JWT_SECRET": SECRET,
    "TETHER_HEARTBEAT_INTERVAL": str(5 * T),
    "TETHER_HEARTBEAT_TIMEOUT": str(5 * T),
    "TETHER_BACKOFF_BASE": str(2 * T),
    "TETHER_BACKOFF_CAP": str(10 * T),
    "TETHER_JITTER_SECONDS": str(T / 2),
    "TETHER_CONNECT_TIMEOUT": str(10 * T),
    "TETHER_CIRCUIT_COOLDOWN": str(10 * T),
    "TETHER_SHUTDOWN_TIMEOUT": "1",
    "OPSMONITOR_INTERVAL": str(T),
    "OPSMONITOR_BANNER_DEBOUNCE": str(DEBOUNCE),
    "OPSMONITOR_LOG_FORMAT": "json",
    "OPSMONITOR_LOG_LEVEL": "info",
}
CARDS = ("rps", "p95_ms", "error_rate", "cpu")


def offered(token: str | None = None) -> list[Subprotocol]:
    """The subprotocols a browser client offers: Tether's, and its token (if any)."""
    names = ["tether.v1"] + ([f"tether.token.{token}"] if token is not None else [])
    return [Subprotocol(name) for name in names]


def app_module() -> ModuleType:
    """examples/opsmonitor/app.py as a module (its settings, for the pure tests)."""
    spec = importlib.util.spec_from_file_location("opsmonitor_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OpsMonitor(ExampleApp):
    """The example app as a process: started, SIGKILLed and started again on one port."""

    def __init__(self, *flags: str, scaled: bool = True, **env: str) -> None:
        env = {**(SCALED if scaled else {"TETHER_JWT_SECRET": SECRET}), **env}
        super().__init__("opsmonitor", *flags, ready="/api/config", env=env)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/updates"

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url) as http:
            return await http.get(path)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as {series: value}, e.g. ``tether_connections`` -> 1.0."""
        return await scrape(self.url + self.metrics_path)

    async def metric(self, name: str) -> float:
        """A series of /metrics, 0 while the hub has not exposed it yet (labelled series)."""
        return (await self.metrics()).get(name, 0.0)

    async def token(self) -> str:
        token: str = (await self.get("/api/token")).json()["token"]
        return token

    def records(self, event: str) -> list[dict[str, Any]]:
        """The server's own structured log records of one kind (its JSON lines on stderr)."""
        assert self.proc is not None
        return [r for r in self.proc.json_err() if r.get("event") == event]


@pytest.fixture
async def monitor() -> AsyncIterator[OpsMonitor]:
    app = OpsMonitor()
    await app.start()
    yield app
    await app.kill()


@pytest.fixture
async def proxy(monitor: OpsMonitor) -> AsyncIterator[ChaosProxy]:
    """A chaos proxy in front of the app: a page opened through it has its network cut."""
    chaos = ChaosProxy(target=("127.0.0.1", monitor.port))
    await chaos.start()
    yield chaos
    await chaos.stop()


@dataclass
class View:
    """The monitor page in Chromium, and what it reports."""

    page: Page
    errors: list[str] = field(default_factory=list)

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def state(self) -> str:
        state: str = await self.js("() => window.opsmonitor.client.state")
        return state

    async def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = await self.js("() => window.opsmonitor.client.metrics()")
        return metrics

    async def seen(self) -> list[tuple[str, int]]:
        seen: list[list[Any]] = await self.js("() => window.opsmonitor.seen")
        return [(str(epoch), int(offset)) for epoch, offset in seen]

    async def count(self) -> int:
        n: int = await self.js("() => window.opsmonitor.seen.length")
        return n

    async def values(self) -> dict[str, str]:
        return {
            card: await self.page.locator(f"[data-card={card}] .value").inner_text()
            for card in CARDS
        }

    async def stale(self) -> bool:
        """Every card greyed and badged "stale" (what the user sees)."""
        marked: bool = await self.js(
            """() => [...document.querySelectorAll('.card')].every((c) =>
                c.hasAttribute('data-stale') && getComputedStyle(c).filter.includes('grayscale')
                && getComputedStyle(c.querySelector('.badge')).display !== 'none')"""
        )
        return marked

    async def live(self) -> bool:
        """Every card in colour, no badge."""
        clear: bool = await self.js(
            """() => [...document.querySelectorAll('.card')].every((c) =>
                !c.hasAttribute('data-stale') && getComputedStyle(c).filter === 'none'
                && getComputedStyle(c.querySelector('.badge')).display === 'none')"""
        )
        return clear

    async def banner(self) -> str | None:
        """The banner's text if it shows, else None."""
        text: str | None = await self.js(
            """() => { const b = document.querySelector('tether-banner');
                if (!b.hasAttribute('visible')) return null;
                const bar = b.shadowRoot.querySelector('.bar');
                return bar.textContent.replace(/\\s+/g, ' ').trim(); }"""
        )
        return text

    async def watch(self) -> None:
        """Record, from now on, whether the banner and stale cards were ever shown."""
        await self.js(
            """() => { const w = window.watched =
                    { banner: false, stale: false, states: [], recovered: false };
                const banner = document.querySelector('tether-banner');
                const card = document.querySelector('.card');
                new MutationObserver(() => {
                    if (banner.hasAttribute('visible')) w.banner = true;
                    // Live again after a banner: connected, banner gone, cards in colour.
                    else if (w.banner && !card.hasAttribute('data-stale')) w.recovered = true;
                }).observe(banner, { attributes: true });
                new MutationObserver(() => {
                    if (card.hasAttribute('data-stale')) w.stale = true;
                    else if (w.banner && !banner.hasAttribute('visible')) w.recovered = true;
                }).observe(card, { attributes: true });
                window.opsmonitor.client.addEventListener('statechange',
                    (e) => w.states.push(e.detail.to)); }"""
        )

    async def watched(self) -> dict[str, Any]:
        watched: dict[str, Any] = await self.js("() => window.watched")
        return watched

    async def updating(self, more: int = 5) -> None:
        """New updates keep arriving (``more`` of them)."""
        start = await self.count()
        await eventually(lambda: self._more(start + more), what=f"{more} more updates")

    async def _more(self, n: int) -> bool:
        return await self.count() >= n

    async def close(self) -> None:
        await self.page.close()
        assert self.errors == [], self.errors


async def open_page(browser: Browser, url: str) -> View:
    page = await browser.new_page()
    view = View(page)
    page.on("pageerror", lambda exc: view.errors.append(str(exc)))
    await page.goto(url + "/")
    await ready(view)
    return view


async def ready(view: View) -> None:
    """Connected, every card showing a value, none stale."""
    await view.page.wait_for_selector("tether-status[state=connected]", timeout=DEADLINE)
    await view.page.wait_for_function(
        "() => [...document.querySelectorAll('.card .value')].every((v) => v.textContent !== '—')",
        timeout=DEADLINE,
    )
    await eventually(view.live, what="cards live")


def every_offset_once(seen: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Per epoch, the offsets delivered: consecutive, none twice, epochs one after another."""
    by_epoch: dict[str, list[int]] = {}
    for epoch, offset in seen:
        by_epoch.setdefault(epoch, []).append(offset)
    switches = sum(1 for a, b in itertools.pairwise(seen) if a[0] != b[0])
    assert switches == len(by_epoch) - 1, f"epochs interleaved: {seen}"
    for epoch, offsets in by_epoch.items():
        first = offsets[0]
        assert offsets == list(range(first, first + len(offsets))), (epoch, offsets)
    return by_epoch


# --- One command; the endpoint; structured lifecycle logs ----------------------------------


async def test_one_command_serves_live_metric_cards_over_ws_updates(
    browser: Browser, monitor: OpsMonitor
) -> None:
    view = await open_page(browser, monitor.url)
    assert await view.page.title() == "Ops monitor"
    assert await view.page.locator(".card").count() == 4
    before = await view.values()
    await view.updating()
    await eventually(lambda: _changed(view, before), what="the cards' values change")
    # The plan's endpoint: the page dials /ws/updates; /metrics is at the root beside it.
    assert await view.js("() => window.opsmonitor.client.url") == monitor.ws_url
    assert (await view.metrics())["transport"] == "websocket"
    assert await monitor.metric("tether_connections") == 1
    assert (await monitor.get("/healthz")).json()["status"] == "ok"
    await view.close()


async def _changed(view: View, before: dict[str, str]) -> bool:
    return await view.values() != before


async def test_connection_lifecycle_logged_with_structured_payloads(
    browser: Browser, monitor: OpsMonitor
) -> None:
    view = await open_page(browser, monitor.url)
    await eventually(lambda: bool(monitor.records("connection_opened")), what="opened record")
    opened = monitor.records("connection_opened")[0]
    assert opened["subject"].startswith("viewer-") and opened["address"] == "127.0.0.1"
    await view.close()
    await eventually(lambda: bool(monitor.records("connection_closed")), what="closed record")
    closed = monitor.records("connection_closed")[0]
    assert closed["session"] == opened["session"] and closed["subscriptions"] == 1
    assert closed["duration_s"] > 0 and {"close_code", "close_reason", "ts"} <= set(closed)


# --- 2.1 Heartbeat; 5 idle timeout ----------------------------------------------------------


async def test_server_heartbeat_every_30_s_two_missed_trigger_a_reconnect(
    browser: Browser, monitor: OpsMonitor, proxy: ChaosProxy
) -> None:
    # The plan's numbers by default: a ping every 30 s, dead after 30 + 30 s of silence.
    plain = OpsMonitor(scaled=False)
    await plain.start()
    try:
        token = await plain.token()
        async with websockets.connect(plain.ws_url, subprotocols=offered(token)) as ws:
            welcome = json.loads(await ws.recv())
        assert (welcome["heartbeat_ms"], welcome["heartbeat_timeout_ms"]) == (30_000, 30_000)
    finally:
        await plain.kill()
    # Scaled: the page behind a network that goes silent (no FIN, no RST) notices the
    # missing heartbeats by itself, and reconnects once the network is back.
    view = await open_page(browser, f"http://127.0.0.1:{proxy.port}")
    assert (await view.metrics())["heartbeatFailures"] == 0
    proxy.stall()
    await view.page.wait_for_selector("tether-status[state=reconnecting]", timeout=DEADLINE)
    assert (await view.metrics())["heartbeatFailures"] == 1
    proxy.heal()
    await ready(view)
    assert (await view.metrics())["transport"] == "websocket"  # a dead link is no proxy
    await view.updating()
    every_offset_once(await view.seen())
    await view.close()


async def test_idle_timeout_the_hub_closes_a_silent_connection(
    monitor: OpsMonitor, proxy: ChaosProxy
) -> None:
    silent = Recorder(f"ws://127.0.0.1:{proxy.port}/ws/updates", get_token=monitor.token)
    await silent.subscribed("ops.metrics")
    assert await monitor.metric("tether_connections") == 1
    proxy.stall()  # the client's bytes stop arriving: it looks idle to the hub

    async def closed() -> bool:
        return any(r["close_code"] == 1011 for r in monitor.records("connection_closed"))

    await eventually(closed, what="the hub's record of closing the silent connection")
    record = next(r for r in monitor.records("connection_closed") if r["close_code"] == 1011)
    assert record["close_reason"] == "heartbeat timeout"
    assert await monitor.metric("tether_heartbeat_timeouts_total") == 1
    assert await monitor.metric("tether_connections") == 0
    await silent.close()


# --- 2.2 Exponential backoff; 6 unit tests for the backoff scheduler ----------------------

#: The plan's ceilings, 2 s x 1.5 capped at 60 s, retry by retry.
CEILINGS = [2, 3, 4.5, 6.75, 10.125, 15.1875, 22.78125, 34.171875, 51.2578125, 60, 60, 60]
#: Delays along a fake clock: a drop (2), four failed attempts (3 .. 10.125), connected for
#: less than 2 minutes then dropped (no reset: 15.1875), connected 2 minutes (reset: 2),
#: one failure (3), then connected exactly 2 minutes and dropped (reset: 2).
SCHEDULE = [2, 3, 4.5, 6.75, 10.125, 15.1875, 2, 3, 2]
RANDS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999999]


def python_core(config: ClientConfig) -> dict[str, Any]:
    ceilings = [
        backoff_ceiling(k, base=config.backoff_base, factor=config.backoff_factor, cap=60)
        for k in range(len(CEILINGS))
    ]
    delays = [
        [
            backoff_delay(
                k,
                base=config.backoff_base,
                factor=config.backoff_factor,
                cap=config.backoff_cap,
                jitter=config.jitter,
                seconds=config.jitter_seconds,
                rand=r,
            )
            for k in range(len(CEILINGS))
        ]
        for r in RANDS
    ]
    life = Lifecycle(config, rand=lambda: 0.5)  # 0.5: no jitter, the ceiling itself
    schedule: list[float | None] = []
    life.start()
    life.begin_attempt()
    life.opened(now=0)
    schedule.append(life.closed(1006, "", now=10))
    for _ in range(4):
        life.begin_attempt()
        schedule.append(life.attempt_failed(Failure("refused")))
    life.begin_attempt()
    life.opened(now=100)
    schedule.append(life.closed(1006, "", now=100 + 119))
    life.begin_attempt()
    life.opened(now=300)
    assert life.stable(now=300 + 119) == 420  # not yet: call again at 2 minutes
    assert life.stable(now=420) is None
    schedule.append(life.closed(1006, "", now=500))
    life.begin_attempt()
    schedule.append(life.attempt_failed(Failure("refused")))
    life.begin_attempt()
    life.opened(now=600)
    schedule.append(life.closed(1006, "", now=720))
    return {"ceilings": ceilings, "delays": delays, "schedule": schedule}


JS_CORE = """
import { backoffCeiling, backoffDelay, Lifecycle, failure } from "%(core)s";
import { DEFAULTS } from "%(constants)s";
const o = %(options)s, RANDS = %(rands)s, N = %(n)d;
const config = { ...DEFAULTS, ...o };
const opts = { base: o.backoffBase, factor: o.backoffFactor, cap: o.backoffCap,
               jitter: o.jitter, ratio: 0, seconds: o.jitterSeconds };
const range = [...Array(N).keys()];
const plain = { base: o.backoffBase, factor: o.backoffFactor, cap: 60 };
const ceilings = range.map((k) => backoffCeiling(k, plain));
const delays = RANDS.map((r) => range.map((k) => backoffDelay(k, opts, r)));
const life = new Lifecycle(config, { rand: () => 0.5 });
const schedule = [];
life.start(); life.beginAttempt(); life.opened(0);
schedule.push(life.closed(1006, "", 10));
for (let i = 0; i < 4; i++) {
  life.beginAttempt();
  schedule.push(life.attemptFailed(failure("refused")));
}
life.beginAttempt(); life.opened(100);
schedule.push(life.closed(1006, "", 100 + 119));
life.beginAttempt(); life.opened(300);
if (life.stable(300 + 119) !== 420 || life.stable(420) !== null) throw new Error("stable()");
schedule.push(life.closed(1006, "", 500));
life.beginAttempt(); schedule.push(life.attemptFailed(failure("refused")));
life.beginAttempt(); life.opened(600);
schedule.push(life.closed(1006, "", 720));
console.log(JSON.stringify({ ceilings, delays, schedule }));
"""


def js_core(options: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:  # make test installs it; CI counts a skip as a failure
        pytest.skip("node is not installed")
    script = JS_CORE % {
        "core": CORE.as_uri(),
        "constants": CORE.with_name("tether-constants.js").as_uri(),
        "options": json.dumps(options),
        "rands": json.dumps(RANDS),
        "n": len(CEILINGS),
    }
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_backoff_2_s_x_1_5_jitter_half_a_second_cap_60_s_reset_after_2_minutes_stable() -> None:
    # The page's settings as the app serves them by default (no variable set) ...
    options = app_module().client_options(environ={})
    snake = {name: options[re.sub(r"_(\w)", lambda m: m[1].upper(), name)] for name in (
        "backoff_base", "backoff_factor", "backoff_cap", "jitter", "jitter_seconds",
        "stable_after", "max_attempts", "connect_timeout", "circuit_cooldown",
    )}  # fmt: skip
    config = ClientConfig(**{**snake, "jitter": Jitter(snake["jitter"])})
    # ... run on both clients' pure cores: the Python client's and the browser's, in Node.
    for result in (python_core(config), js_core(options)):
        assert result["ceilings"] == CEILINGS
        for r, delays in zip(RANDS, result["delays"], strict=True):
            for ceiling, delay in zip(CEILINGS, delays, strict=True):
                # Within ±0.5 s of the schedule, never above the 60 s cap.
                assert ceiling - 0.5 - 1e-9 <= delay <= min(60, ceiling + 0.5) + 1e-9, (r, delay)
                if r == 0.0:
                    assert delay == pytest.approx(ceiling - 0.5)
        assert result["schedule"] == pytest.approx(SCHEDULE)
    python, js = python_core(config), js_core(options)
    for ours, theirs in zip(python["delays"], js["delays"], strict=True):
        assert ours == pytest.approx(theirs)  # the two cores agree, draw for draw


# --- 2.3 Offline UX: banner with a countdown after > 5 s, stale cards ----------------------


async def test_banner_live_updates_paused_with_a_retry_countdown_only_after_more_than_5_s(
    browser: Browser, monitor: OpsMonitor, proxy: ChaosProxy
) -> None:
    view = await open_page(browser, f"http://127.0.0.1:{proxy.port}")
    await view.watch()
    # A blip (the network drops, the page is back at once): no banner.
    proxy.cut()
    await eventually(lambda: _states_include(view, "reconnecting"), what="the blip seen")
    await ready(view)
    assert (await view.watched())["banner"] is False
    # An outage: the banner waits out its debounce, then says so and counts down.
    proxy.refuse()
    proxy.cut()
    down_at = time.monotonic()
    await view.page.wait_for_selector("tether-status[state=reconnecting]", timeout=DEADLINE)
    assert await view.banner() is None
    await view.page.wait_for_selector("tether-banner[visible]", timeout=DEADLINE)
    assert time.monotonic() - down_at >= DEBOUNCE - T  # "only if downtime > 5 s"

    async def counting_down() -> bool:
        text = await view.banner() or ""
        return (
            re.fullmatch(re.escape(MESSAGE) + r" Next attempt in \d+ s\. Retry now", text)
            is not None
        )

    await eventually(counting_down, what="the plan's words and a countdown")
    proxy.heal()
    await ready(view)
    await view.page.wait_for_selector("tether-banner:not([visible])", state="attached")
    every_offset_once(await view.seen())
    await view.close()


async def _states_include(view: View, state: str) -> bool:
    return state in (await view.watched())["states"]


async def test_stale_badges_and_greyscale_on_cards_while_not_live(
    browser: Browser, monitor: OpsMonitor
) -> None:
    view = await open_page(browser, monitor.url)
    await monitor.kill()
    await eventually(view.stale, what="cards greyed and badged stale")
    last = await view.values()
    await asyncio.sleep(5 * T)
    assert await view.values() == last  # the last values stay on screen
    assert "—" not in last.values()
    # Started again as the one command does, without TETHER_JWT_SECRET: a new secret, so
    # the page's token is refused (1008) once, and it fetches a new one.
    del monitor.env["TETHER_JWT_SECRET"]
    await monitor.start()
    await ready(view)
    await view.updating()
    await view.close()


# --- 6 Playwright: disconnect and recovery --------------------------------------------------


async def test_playwright_disconnect_and_recovery_server_killed_and_restarted(
    browser: Browser, monitor: OpsMonitor
) -> None:
    view = await open_page(browser, monitor.url)
    await view.updating()
    await monitor.kill()  # SIGKILL: no close frame, no restart hint
    down_at = time.monotonic()
    await view.page.wait_for_selector("tether-status[state=reconnecting]", timeout=DEADLINE)
    assert await view.stale()
    assert await view.banner() is None  # not yet: it waits out the debounce
    await view.page.wait_for_selector("tether-banner[visible]", timeout=DEADLINE)
    assert time.monotonic() - down_at >= DEBOUNCE - T
    assert (await view.banner() or "").startswith(MESSAGE)
    await monitor.start()
    await ready(view)
    await view.page.wait_for_selector("tether-banner:not([visible])", state="attached")
    await view.updating()
    # Every update once, in order; the restarted app's history (a new epoch) from its
    # first offset; the old epoch's undelivered tail (if any) reported, never silent.
    by_epoch = every_offset_once(await view.seen())
    assert len(by_epoch) == 2
    old, new = by_epoch.values()
    assert new[0] == 1
    resyncs = await view.js("() => window.opsmonitor.resyncs")
    assert [(r["topic"], r["missing"][0]["from"]) for r in resyncs] == [
        ("ops.metrics", old[-1] + 1)
    ]
    assert (await view.metrics())["totalReconnects"] == 1
    assert await monitor.metric("tether_connections") == 1
    await view.close()


# --- 2.4 Instrumentation: the plan's Prometheus names; client telemetry ---------------------


def relabel_rules() -> dict[str, str]:
    """The README's metric_relabel_configs: Tether's metric name -> the plan's."""
    readme = (HERE / "README.md").read_text()
    rules = re.findall(r"regex: (\S+)\s+target_label: __name__\s+replacement: (\S+)", readme)
    return dict(rules)


async def plan_metrics(app: OpsMonitor) -> dict[str, float]:
    """/metrics as Prometheus stores it after the README's relabelling."""
    rules = relabel_rules()
    return {rules.get(name, name): value for name, value in (await app.metrics()).items()}


async def test_prometheus_disconnections_counter_and_clients_gauge(
    browser: Browser, monitor: OpsMonitor
) -> None:
    assert relabel_rules() == {
        "tether_disconnections_total": "ws_updates_disconnections_total",
        "tether_connections": "ws_updates_clients",
    }
    first = await open_page(browser, monitor.url)
    second = await open_page(browser, monitor.url)
    metrics = await plan_metrics(monitor)
    assert metrics["ws_updates_clients"] == 2
    before = metrics["ws_updates_disconnections_total"]
    await second.close()

    async def counted() -> bool:
        m = await plan_metrics(monitor)
        return (m["ws_updates_clients"], m["ws_updates_disconnections_total"]) == (1, before + 1)

    await eventually(counted, what="one client fewer, one disconnection more")
    await first.close()


async def test_client_logs_sent_to_a_monitoring_endpoint(browser: Browser) -> None:
    app = OpsMonitor(TETHER_CLIENT_TELEMETRY="true", TETHER_TELEMETRY_INTERVAL=str(5 * T))
    await app.start()
    try:
        view = await open_page(browser, app.url)
        await view.js("() => window.opsmonitor.client.reconnect()")
        await ready(view)

        async def reported() -> bool:
            return await app.metric('tether_client_events_total{kind="connected"}') >= 2

        await eventually(reported, what="the page's lifecycle events counted by the server")
        await view.close()
    finally:
        await app.kill()


# --- 2.5 Server safeguards: auth, handshake rate, the broadcast path -----------------------


async def test_auth_validation_a_handshake_without_a_valid_token_is_refused(
    monitor: OpsMonitor,
) -> None:
    forged = jwt.encode(
        {"sub": "viewer-0", "topics": ["ops.metrics"], "exp": int(time.time()) + 600},
        "not-the-secret-" + "0" * 32,
        algorithm="HS256",
    )
    for protocols in (offered(), offered(forged)):
        async with websockets.connect(monitor.ws_url, subprotocols=protocols) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
    # The HTTP fallback alike: no token, no stream.
    assert (await monitor.get("/ws/updates/events")).status_code == 401
    assert await monitor.metric("tether_auth_failures_total") >= 3
    # With the app's token the same handshake is welcomed.
    token = await monitor.token()
    async with websockets.connect(monitor.ws_url, subprotocols=offered(token)) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


async def test_token_refresh_inside_the_live_connection(browser: Browser) -> None:
    # Tokens of 2 s, 1 s of leeway: the hub would close the page's connection (1008) 3 s
    # after it opened at the latest, unless the page sent a fresh token inside it in time.
    app = OpsMonitor(OPSMONITOR_TOKEN_TTL="2", TETHER_JWT_LEEWAY="1")
    await app.start()
    try:
        view = await open_page(browser, app.url)
        await asyncio.sleep(4.5)  # past the first token's deadline
        await view.updating()
        assert await view.state() == "connected"
        assert (await view.metrics())["totalReconnects"] == 0
        assert [r["close_code"] for r in app.records("connection_closed")] == []
        await view.close()
    finally:
        await app.kill()


async def knock(port: int) -> str:
    """One connection, one request: the status the server answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    try:
        line = await asyncio.wait_for(reader.readline(), 100 * T)
    finally:
        writer.close()
    return line.split()[1].decode() if line else "closed"


async def test_handshake_rate_limit_a_flood_gets_429_while_the_page_stays_live(
    browser: Browser, monitor: OpsMonitor
) -> None:
    view = await open_page(browser, monitor.url)
    statuses = await asyncio.gather(*(knock(monitor.port) for _ in range(200)))
    refused = statuses.count("429")
    assert refused >= 100, statuses  # 40 at once, 20 a second: the rest get 429
    assert set(statuses) <= {"200", "429"}
    await view.updating()
    assert await view.state() == "connected"
    assert (await view.metrics())["totalReconnects"] == 0

    async def counted() -> bool:
        try:
            return await monitor.metric("tether_handshakes_refused_total") >= refused
        except httpx.HTTPError:
            return False  # our own scrape may meet the empty bucket too

    await eventually(counted, what="the refusals counted")
    await view.close()


async def test_broadcast_path_protected_a_stalled_consumer_is_cut_while_the_page_keeps_receiving(
    browser: Browser,
) -> None:
    # Heartbeats at the plan's 30 s: the stalled consumer is caught by its send buffer.
    app = OpsMonitor(
        TETHER_HEARTBEAT_INTERVAL="30", TETHER_HEARTBEAT_TIMEOUT="30", TETHER_API_KEYS="collector"
    )
    await app.start()
    chaos = ChaosProxy(target=("127.0.0.1", app.port))
    await chaos.start()
    stuck = Recorder(f"ws://127.0.0.1:{chaos.port}/ws/updates", get_token=app.token)
    try:
        view = await open_page(browser, app.url)
        await stuck.subscribed("ops.metrics")
        chaos.stall()  # it stops reading: what the hub writes to it piles up
        # A collector publishes big updates over HTTP until the hub cuts the stalled one.
        update = {"rps": 1.0, "p95_ms": 1.0, "error_rate": 0.0, "cpu": 1.0, "trace": "x" * 40_000}
        last = 0
        async with httpx.AsyncClient(base_url=app.url, headers={"X-API-Key": "collector"}) as http:
            for n in range(2000):
                body = {"topic": "ops.metrics", "data": update}
                last = (await http.post("/publish", json=body)).json()["offset"]
                if n % 25 == 24 and await app.metric("tether_slow_consumers_total") >= 1:
                    break
        assert await app.metric("tether_slow_consumers_total") == 1
        await eventually(lambda: bool(app.records("connection_closed")), what="its record")
        assert [r["close_code"] for r in app.records("connection_closed")] == [4008]
        # The page got every update, in order, without a reconnect: nobody else was slowed.
        await eventually(lambda: _reached(view, last), what="the page caught up")
        every_offset_once(await view.seen())
        assert (await view.metrics())["totalReconnects"] == 0
        assert await view.state() == "connected"
        await view.close()
    finally:
        await stuck.close()
        await chaos.stop()
        await app.kill()


async def _reached(view: View, offset: int) -> bool:
    seen = await view.seen()
    return bool(seen) and seen[-1][1] >= offset


# --- 3.3 Configuration: every setting from the environment, .env.example --------------------


def documented() -> dict[str, str]:
    """``.env.example`` as {name: value}."""
    values: dict[str, str] = {}
    for line in (HERE / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value.strip('"')
    return values


async def test_every_setting_from_environment_variables_with_an_env_example(
    tmp_path: Path,
) -> None:
    ops = app_module()
    names = {
        *map(env_name, ops.HUB_PLAN),
        *map(env_name, ops.CLIENT_OPTIONS),
        *map(env_name, ops.BROWSER_OPTIONS),
        *ops.APP_SETTINGS,
    }
    env_example = documented()
    assert names <= set(env_example), names - set(env_example)
    # Each documented default is the one in force: the plan's, the app's, or Tether's.
    defaults: dict[str, Any] = {
        **{env_name(n): v for n, v in {**ops.BROWSER_OPTIONS, **ops.CLIENT_PLAN}.items()},
        **{env_name(n): v for n, v in ops.HUB_PLAN.items()},
        **ops.APP_SETTINGS,
    }
    hub, client = HubConfig(), ClientConfig()
    for name, value in env_example.items():
        field_name = name.removeprefix("TETHER_").lower()
        expected = defaults.get(
            name, getattr(hub, field_name, getattr(client, field_name, "no default"))
        )
        if name == "TETHER_PORT":
            expected = ops.DEFAULT_PORT  # the app's (--port wins)
        expected = expected.value if hasattr(expected, "value") else expected
        if isinstance(expected, bool):
            assert value == str(expected).lower(), name
        else:
            assert type(expected)(value) == expected, name

    plan = {
        "backoffBase": 2,
        "backoffFactor": 1.5,
        "backoffCap": 60,
        "jitter": "absolute",
        "jitterSeconds": 0.5,
        "stableAfter": 120,
        "transport": "auto",
        "fallbackAfter": 3,
    }
    default = OpsMonitor(scaled=False)
    from_file = OpsMonitor("--env-file", str(HERE / ".env.example"), scaled=False)
    # A file with other values, and a variable that wins over it.
    custom = tmp_path / ".env"
    custom.write_text(
        "# ours\nTETHER_BACKOFF_BASE=1\nTETHER_BACKOFF_CAP=30\n"
        "OPSMONITOR_BANNER_MESSAGE='Paused.'\nTETHER_FALLBACK_AFTER=5\n"
    )
    overridden = OpsMonitor(
        "--env-file",
        str(custom),
        scaled=False,
        TETHER_BACKOFF_CAP="45",
        OPSMONITOR_BANNER_DEBOUNCE="8",
    )
    configs = []
    for app in (default, from_file, overridden):
        await app.start()
        try:
            configs.append((await app.get("/api/config")).json())
        finally:
            await app.kill()
    assert configs[0] == configs[1]  # .env.example holds exactly the defaults
    assert configs[0]["client"].items() >= plan.items()
    assert configs[0]["banner"] == {"debounce": 5, "message": MESSAGE}
    changed = configs[2]
    assert (changed["client"]["backoffBase"], changed["client"]["backoffCap"]) == (1, 45)
    assert changed["client"]["fallbackAfter"] == 5
    assert changed["banner"] == {"debounce": 8, "message": "Paused."}


# --- 6 Chaos monkey CLI; 6.1 HTTP fallback ---------------------------------------------------


async def test_chaos_cli_toggling_the_network_under_the_page(
    browser: Browser, monitor: OpsMonitor
) -> None:
    listen = free_port()
    chaos = await spawn(
        "chaos",
        "--listen", f"127.0.0.1:{listen}",
        "--target", f"127.0.0.1:{monitor.port}",
        "--cut-every", str(30 * T),
        "--stall-every", str(40 * T),
        "--stall-for", str(30 * T),
        "--duration", str(600 * T),
    )  # fmt: skip
    try:
        await eventually(lambda: any("chaos proxy" in line for line in chaos.err), what="listening")
        view = await open_page(browser, f"http://127.0.0.1:{listen}")
        await view.watch()

        def logged(what: str) -> int:
            return sum(1 for line in chaos.err if f"chaos: {what}" in line)

        async def recovered() -> bool:
            # A cut, and a stall that outlasted the banner's delay: the page said so, and
            # is live again by itself once the network is back.
            watched = await view.watched()
            return bool(watched["recovered"]) and logged("cut") >= 1 and logged("stall") >= 1

        await eventually(recovered, timeout=300 * T, what="cuts, a stall, a banner, live again")
        watched = await view.watched()
        assert watched["stale"] and "reconnecting" in watched["states"]
        await ready(view)
        every_offset_once(await view.seen())  # through every cut and stall: none lost
        assert await view.js("() => window.opsmonitor.resyncs.length") == 0
        await view.close()
    finally:
        await chaos.stop(signal.SIGKILL)
    cuts = [line for line in chaos.err if "chaos: cut" in line]
    assert cuts and all(re.search(r"cut \d+ connection", line) for line in cuts)


async def test_http_fallback_after_n_failed_websocket_attempts_over_sse(
    browser: Browser,
) -> None:
    app = OpsMonitor(TETHER_WS_PROBE_INTERVAL=str(10 * T))
    await app.start()
    try:
        page = await browser.new_page()
        view = View(page)
        page.on("pageerror", lambda exc: view.errors.append(str(exc)))
        refused: list[str] = []
        blocked = True

        async def upgrades(ws: WebSocketRoute) -> None:  # a proxy that refuses WebSocket
            if blocked:
                refused.append(ws.url)
                await ws.close(code=4999, reason="upgrade refused by a proxy")
            else:
                ws.connect_to_server()

        await page.route_web_socket(lambda url: url.endswith("/ws/updates"), upgrades)
        await page.goto(app.url + "/")
        await ready(view)
        # fallbackAfter: 3 failed WebSocket attempts, then server-sent events + POST.
        assert len(refused) == 3
        assert (await view.metrics())["transport"] == "sse"
        await view.updating()
        assert await app.metric("tether_connections") == 1
        # Upgrades get through again: back to WebSocket, without a gap or a duplicate.
        blocked = False

        async def on_websocket() -> bool:
            via: str | None = (await view.metrics())["transport"]
            return via == "websocket"

        await eventually(on_websocket, what="back on WebSocket")
        await ready(view)
        await view.updating()
        every_offset_once(await view.seen())
        assert await view.js("() => window.opsmonitor.resyncs.length") == 0
        await view.close()
    finally:
        await app.kill()
