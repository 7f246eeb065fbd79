"""``tether demo``: a live dashboard that shows every reliability feature at work.

Three simulated feeds (match odds, a scrape job's progress, live metrics) are
published by a hub. The dashboard (``http://127.0.0.1:8765/``) reaches the hub
through a :class:`ChaosProxy`, and its chaos controls cut the connection, stall
it (half-open) or restart the hub. The indicator, the banner, stale cards and
per-topic published / delivered / recovered / gaps counters show what happens.

History lives in a broker that outlives the hub process, as it would in Redis,
so a restart resumes with zero gaps. (With a purely in-memory hub a restart is
reported as a gap instead: ``tether demo --terminal --volatile`` shows that.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .chaos import ChaosProxy
from .client import Client, Delivery, State
from .config import HubConfig, from_env
from .protocol import Gap
from .server import Hub
from .server.app import STATIC, script_route
from .server.broker import MemoryBroker
from .server.metrics import make_registry, render
from .server.serve import EmbeddedServer, HubServer

TOPICS = ("odds", "scrape", "metrics")
#: Short heartbeats so a stall is noticed within ~6 s on stage (production default: 45 s).
DEMO_HUB: dict[str, Any] = {
    "heartbeat_interval": 3.0,
    "heartbeat_timeout": 3.0,
    "restart_spread": 2.0,
}
#: Snappy retries for a demo; the production defaults are in docs/configuration.md.
DEMO_CLIENT: dict[str, Any] = {
    "backoffBase": 0.5,
    "backoffCap": 4.0,
    "maxAttempts": 20,
    "connectTimeout": 3.0,  # an attempt made during a stall hangs; give up on it quickly
    # A page left open while the demo is stopped and started again probes every 5 s once
    # its retries are spent, so it is back within seconds of the demo, by itself.
    "circuitCooldown": 5.0,
}


class DemoBackend:
    """The hub (restartable), its durable broker, the chaos proxy and the feeds."""

    def __init__(
        self,
        *,
        volatile: bool = False,
        hub_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        down_for: float = 1.0,
        proxy_port: int = 0,
    ) -> None:
        self.hub_options = {**DEMO_HUB, **(hub_options or {})}
        self.client_options = {**DEMO_CLIENT, **(client_options or {})}
        self.down_for = down_for
        #: The chaos proxy's port, which is the page's real-time URL: fixed (not 0) so a
        #: page left open across a restart of the whole demo finds the new one.
        self.proxy_port = proxy_port
        config = from_env(HubConfig, **{**self.hub_options, "port": 0})
        self.config = config
        self.volatile = volatile
        self.broker = MemoryBroker(
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            max_topics=config.max_topics,
        )
        self.hub: Hub | None = None
        self.server: HubServer | None = None
        self.hub_port = 0
        self.proxy: ChaosProxy | None = None
        self.heads = dict.fromkeys(TOPICS, 0)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._start_hub()
        self.proxy = ChaosProxy(target=("127.0.0.1", self.hub_port), port=self.proxy_port)
        await self.proxy.start()
        self._tasks.append(asyncio.create_task(self._feed()))

    async def _start_hub(self) -> None:
        broker = None if self.volatile else self.broker
        self.hub = Hub(config=self.config, broker=broker)
        self.server = HubServer(self.hub)
        await self.server.start()
        self.hub_port = self.server.port
        # Later restarts reuse the port, so the proxy's target stays valid.
        self.config = from_env(HubConfig, **{**self.hub_options, "port": self.hub_port})

    async def restart(self) -> None:
        hub_server, self.hub = self.server, None
        if hub_server is not None:
            await hub_server.stop()  # every client gets 1012 + a spread retry hint
        await asyncio.sleep(self.down_for)  # the "process" is down for a moment
        await self._start_hub()

    def cut(self) -> int:
        assert self.proxy is not None
        return self.proxy.cut()

    async def stall(self, seconds: float | None = None) -> None:
        """Half-open for ``seconds`` (default: long enough for the heartbeat to notice)."""
        if seconds is None:
            seconds = self.config.heartbeat_interval + self.config.heartbeat_timeout + 2
        assert self.proxy is not None
        self.proxy.stall()
        await asyncio.sleep(seconds)
        self.proxy.heal()

    async def _feed(self) -> None:
        rng = random.Random()
        home, draw, away, progress, items = 2.10, 3.30, 3.60, 0, 0
        while True:
            await asyncio.sleep(0.25)
            hub = self.hub
            if hub is None or hub.closing:
                continue
            home = max(1.01, home + rng.uniform(-0.04, 0.04))
            away = max(1.01, away + rng.uniform(-0.04, 0.04))
            draw = max(1.01, draw + rng.uniform(-0.02, 0.02))
            odds = {"match": "Arsenal v Chelsea", "home": home, "draw": draw, "away": away}
            self.heads["odds"] = await hub.publish("odds", odds)
            if rng.random() < 0.6:
                progress = (progress + rng.randint(1, 4)) % 101
                items += rng.randint(3, 12)
                self.heads["scrape"] = await hub.publish(
                    "scrape", {"job": "bookmakers-eu", "progress": progress, "items": items}
                )
            if rng.random() < 0.4:
                metrics = {
                    "cpu": round(rng.uniform(8, 85)),
                    "mem": round(rng.uniform(40, 70)),
                    "rps": rng.randint(120, 900),
                }
                self.heads["metrics"] = await hub.publish("metrics", metrics)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.proxy is not None:
            await self.proxy.stop()
        if self.server is not None:
            await self.server.stop()


def create_demo_app(backend: DemoBackend) -> Starlette:
    """The dashboard, the browser modules, and the chaos/stat endpoints."""
    background: set[asyncio.Task[None]] = set()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> Response:
        assert backend.proxy is not None
        return JSONResponse(
            {
                "wsUrl": f"ws://127.0.0.1:{backend.proxy.port}/ws",
                "clientOptions": backend.client_options,
            }
        )

    async def stats(request: Request) -> Response:
        return JSONResponse({"heads": backend.heads, "up": backend.hub is not None})

    async def metrics(request: Request) -> Response:
        # The dashboard's origin serves the hub's metrics too (the hub itself sits behind
        # the chaos proxy on a random port, and is replaced on every restart).
        if backend.hub is None:
            return JSONResponse({"code": "restarting", "message": "the hub is restarting"}, 503)
        return Response(render(make_registry(backend.hub)), media_type=CONTENT_TYPE_LATEST)

    async def chaos(request: Request) -> Response:
        action = request.path_params["action"]
        if action == "cut":
            return JSONResponse({"cut": backend.cut()})
        if action in ("stall", "restart"):
            job = backend.stall() if action == "stall" else backend.restart()
            task = asyncio.create_task(job)
            background.add(task)
            task.add_done_callback(background.discard)
            return JSONResponse({action: "started"})
        return JSONResponse({"code": "unknown_action", "message": f"no chaos {action!r}"}, 404)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/demo/config", config),
            Route("/demo/stats", stats),
            Route("/metrics", metrics),
            Route("/demo/chaos/{action}", chaos, methods=["POST"]),
            script_route(),
        ]
    )


async def run_demo(
    *,
    port: int = 8765,
    duration: float = 0,
    terminal: bool = False,
    volatile: bool = False,
    proxy_port: int | None = None,
) -> int:
    # The page is served from this port and talks to the hub through the chaos proxy:
    # allow exactly this origin. Publishing happens in-process, but the hub is marked
    # insecure-dev all the same so `tether publish` works against it (loopback only).
    backend = DemoBackend(
        volatile=volatile,
        hub_options={"allowed_origins": f"http://127.0.0.1:{port}", "insecure_dev": True},
        proxy_port=port + 1 if proxy_port is None else proxy_port,
    )
    try:
        await backend.start()
    except OSError as exc:
        print(
            f"tether demo: cannot listen on 127.0.0.1:{backend.proxy_port} for the page's "
            f"real-time link ({exc.strerror}); pick free ports with --port (and --proxy-port)",
            file=sys.stderr,
        )
        await backend.stop()
        return 1
    web: EmbeddedServer | None = None
    watcher: asyncio.Task[None] | None = None
    if not terminal:
        settings = uvicorn.Config(
            create_demo_app(backend),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        web = EmbeddedServer(settings)
        web_task = asyncio.create_task(web.serve())
        while not web.started:
            if web_task.done():
                web_task.result()
                return 1
            await asyncio.sleep(0.05)
        print(f"tether demo: open http://127.0.0.1:{port}/  (Ctrl-C to stop)", flush=True)
        print(f"metrics (Prometheus): http://127.0.0.1:{port}/metrics", flush=True)
        print(
            "note: the demo hub runs with insecure_dev (no credentials for POST /publish) and "
            "no JWT; see docs/security.md for a secure setup",
            flush=True,
        )
    else:
        watcher = asyncio.create_task(_terminal(backend))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration or None)
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if web is not None:
        web.should_exit = True
        await web_task
    await backend.stop()
    return 0


async def _terminal(backend: DemoBackend) -> None:
    """A Python client through the chaos proxy, printing its state and counters."""
    assert backend.proxy is not None
    counts = {t: {"got": 0, "rec": 0, "gaps": 0} for t in TOPICS}

    def on_message(msg: Delivery) -> None:
        counts[msg.topic]["got"] += 1
        counts[msg.topic]["rec"] += msg.recovered

    def on_resync(topic: str, missing: list[Gap]) -> None:
        counts[topic]["gaps"] += sum((g.end or g.start) - g.start + 1 for g in missing)
        print(f"  * resync {topic}: {missing}", flush=True)

    client = Client(
        f"ws://127.0.0.1:{backend.proxy.port}/ws",
        on_state_change=lambda o, n: print(f"  * state {o.value} -> {n.value}", flush=True),
        on_resync=on_resync,
        backoff_base=0.5,
        backoff_cap=4.0,
    )
    for topic in TOPICS:
        await client.subscribe(topic, on_message, rewind=1)  # the current value at once
    await client.start()
    print("keys (then Enter): c=cut s=stall r=restart", flush=True)
    keys = asyncio.create_task(_keys(backend)) if sys.stdin.isatty() else None
    try:
        step = 0
        while True:
            await asyncio.sleep(1)
            step += 1
            if keys is None and step % 8 == 0:
                print(f"  * auto chaos: cut {backend.cut()}", flush=True)
            state = client.state.value if client.state is not State.CONNECTED else "connected"
            parts = [f"[{state:>12}]"] + [
                f"{t}: got {c['got']} rec {c['rec']} gaps {c['gaps']}" for t, c in counts.items()
            ]
            print("  ".join(parts), flush=True)
    finally:
        if keys is not None:
            keys.cancel()
        await client.close()


async def _keys(backend: DemoBackend) -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = line.strip().lower()
        if command == "c":
            backend.cut()
        elif command == "s":
            await backend.stall()
        elif command == "r":
            await backend.restart()


__all__ = ["DemoBackend", "create_demo_app", "run_demo"]
