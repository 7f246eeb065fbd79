"""Test helpers: the scalable time unit, scaled options, a recording client, ``eventually``.

``TETHER_TEST_TIME_UNIT`` (seconds, default 0.1) scales every interval the
integration tests use: heartbeats, backoff, cooldowns. Raise it on a slow
machine to trade speed for margin; no test asserts wall-clock speed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether import Client, Delivery, Gap, Hub, State
from tether.server.serve import HubServer

#: The scalable time unit, in seconds.
T = float(os.environ.get("TETHER_TEST_TIME_UNIT", "0.1"))


def hub_options(**overrides: Any) -> dict[str, Any]:
    """Hub settings scaled to the test time unit (port 0: a free port)."""
    options: dict[str, Any] = {
        "port": 0,
        "heartbeat_interval": 3 * T,
        "heartbeat_timeout": 3 * T,
        "restart_spread": 5 * T,
        "shutdown_timeout": 1.0,
        # Most tests are not about security: the security tests set these explicitly.
        "insecure_dev": True,
        "allowed_origins": "*",
        "inbound_burst": 10_000,
    }
    options.update(overrides)
    return options


def client_options(**overrides: Any) -> dict[str, Any]:
    """Client settings scaled to the test time unit."""
    options: dict[str, Any] = {
        "backoff_base": T,
        "backoff_cap": 5 * T,
        "connect_timeout": 20 * T,
        "stable_after": 50 * T,
        "circuit_cooldown": 20 * T,
    }
    options.update(overrides)
    return options


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 100 * T,
    what: str = "condition",
    explain: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Wait until ``predicate()`` (sync or async) holds; fail naming ``what`` after ``timeout``.

    ``explain``, when given, says what was seen instead: its text ends the failure, so
    a rare failure on CI can be understood from its log alone.
    """
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if time.monotonic() > deadline:
            seen = f"; seen: {await explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{seen}")
        await asyncio.sleep(min(0.01, T / 10))


class Recorder:
    """A real :class:`Client` plus everything it reported, for assertions."""

    def __init__(self, url: str, **options: Any) -> None:
        self.deliveries: list[Delivery] = []
        self.states: list[tuple[State, State, float]] = []
        self.resyncs: list[tuple[str, list[Gap]]] = []
        self.reconnects = 0
        self.client = Client(
            url,
            on_state_change=lambda old, new: self.states.append((old, new, time.monotonic())),
            on_reconnect=self._on_reconnect,
            on_resync=lambda topic, missing: self.resyncs.append((topic, missing)),
            **client_options(**options),
        )

    def _on_reconnect(self) -> None:
        self.reconnects += 1

    def on_message(self, msg: Delivery) -> None:
        self.deliveries.append(msg)

    async def subscribe(self, *topics: str) -> None:
        for topic in topics:
            await self.client.subscribe(topic, self.on_message)

    async def subscribed(self, *topics: str) -> None:
        """Connect and wait until every topic's subscription is confirmed."""
        await self.subscribe(*topics)
        await self.client.connect(timeout=100 * T)
        await eventually(
            lambda: all(self.client.is_live(t) for t in topics),
            what=f"subscriptions {topics} confirmed",
        )

    def offsets(self, topic: str) -> list[int]:
        return [d.offset for d in self.deliveries if d.topic == topic]

    def state_sequence(self) -> list[State]:
        return [new for _, new, _ in self.states]

    async def close(self) -> None:
        await self.client.close()


class ThreadedHub:
    """A real hub on its own event loop in a thread, for synchronous (Hypothesis) tests.

    ``call`` runs a coroutine on that loop and waits for its result.
    """

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HubServer(Hub(**hub_options(**options)))
        self.call(self.server.start())

    def call(self, coro: Any, *, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class BrokenHub:
    """A real WebSocket server speaking just enough of the protocol to send bad messages.

    It welcomes, answers a subscribe to ``t`` with head 0, then writes ``frames`` as
    text frames exactly as given (no UTF-8 check), and records ``undeliverable``
    reports. It stands for an older or buggy hub: Tether's own never sends these.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.reports: list[dict[str, Any]] = []
        self.url = ""

    async def handler(self, ws: Any) -> None:
        welcome = {
            "type": "welcome",
            "version": 1,
            "session": "s-broken",
            "heartbeat_ms": 60_000,
            "heartbeat_timeout_ms": 60_000,
            "limits": {"max_frame_bytes": 65536, "max_subscriptions": 100, "dedup_window": 100},
            "ts": 0,
        }
        await ws.send(json.dumps(welcome))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "subscribe":
                await ws.send(
                    '{"type":"subscribed","topic":"t","epoch":"E","head":0,"recovered":true,'
                    '"missing":[]}'
                )
                for data in self.frames:
                    await ws.send(data, text=True)
            elif frame["type"] == "undeliverable":
                self.reports.append(frame)


def bad_message(offset: int, data: bytes) -> bytes:
    """A ``message`` frame for topic ``t``, epoch ``E``, with ``data`` spliced in as is."""
    head = b'{"type":"message","topic":"t","epoch":"E","offset":' + str(offset).encode()
    return head + b',"ts":0,"data":' + data + b"}"


async def post_publish(
    http: httpx.AsyncClient, body: bytes, *, content_type: str = "application/json"
) -> httpx.Response:
    """``POST /publish`` with ``body`` exactly as given (bad bytes included)."""
    return await http.post("/publish", content=body, headers={"content-type": content_type})


def counting_hub(**options: Any) -> tuple[Hub, list[int]]:
    """A hub (test options) whose ``n`` handler records each message's integer ``data``
    in arrival order and answers it: for checking that sends run once each, in order."""
    hub = Hub(**hub_options(**options))
    handled: list[int] = []

    @hub.on("n")
    async def record(msg: Any) -> int:
        handled.append(int(msg.data))
        return int(msg.data)

    return hub, handled
