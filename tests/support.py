"""Test helpers: the scalable time unit, scaled options, a recording client, ``eventually``.

``TETHER_TEST_TIME_UNIT`` (seconds, default 0.1) scales every interval the
integration tests use: heartbeats, backoff, cooldowns. Raise it on a slow
machine to trade speed for margin; no test asserts wall-clock speed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tether import Client, Delivery, Gap, State

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
) -> None:
    """Wait until ``predicate()`` (sync or async) holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
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
