"""Pytest fixtures for a real Redis (register with ``pytest_plugins``, or import them).

``redis_server``: a fresh ``redis-server`` per test (see tests/redis_server.py), stopped
at teardown whatever the test did to it (stopped, killed, restarted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .redis_server import RedisServer


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server
