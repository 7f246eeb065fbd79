"""Every conformance scenario runs on both brokers: in memory, and on a real Redis.

``start_hub`` is parametrized: with ``redis`` each hub it builds from options gets a
``redis_url`` (a fresh redis-server per test). Scenarios that build their own ``Hub``
(the restart scenarios s05 and s09, about what an in-memory hub loses) keep theirs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tether import Hub
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..redis_server import RedisServer
from ..support import hub_options


@pytest.fixture(params=["memory", "redis"])
async def start_hub(request: pytest.FixtureRequest) -> AsyncIterator[StartHub]:
    servers: list[HubServer] = []
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = RedisServer()
        await redis.__aenter__()

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
            await redis.__aexit__(None, None, None)
