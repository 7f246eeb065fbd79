"""Pytest fixtures for a real Redis (register with ``pytest_plugins``, or import them).

``redis_server``: a fresh ``redis-server`` per test (see tests/redis_server.py), stopped
at teardown whatever the test did to it (stopped, killed, restarted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tether import Hub
from tether.server.serve import HubServer

from .redis_server import RedisServer
from .support import hub_options

#: The brokers every conformance scenario runs on.
BROKERS = ["memory", "redis"]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


async def hubs_on(broker: str) -> AsyncIterator[Callable[..., Awaitable[HubServer]]]:
    """A ``start_hub`` whose hubs use ``broker``: with ``redis``, each hub built from
    options gets the ``redis_url`` of a fresh redis-server. Scenarios that build their
    own ``Hub`` (the restart scenarios, about what an in-memory hub loses) keep theirs."""
    servers: list[HubServer] = []
    redis = RedisServer() if broker == "redis" else None
    if redis is not None:
        redis.start()

    async def start(hub: Hub | None = None, **overrides: Any) -> HubServer:
        if hub is None:
            if redis is not None:
                overrides.setdefault("redis_url", redis.url)
            hub = Hub(**hub_options(**overrides))
        server = HubServer(hub)
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()
        if redis is not None:
            redis.close()
