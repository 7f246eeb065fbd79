"""Shared fixtures: real hubs on 127.0.0.1, chaos proxies, a real Redis (see tests/support.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.server import serve

from tether import Hub
from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from .support import BrokenHub, eventually, hub_options

#: ``redis_server``: a real redis-server per test (tests/redis_fixtures.py).
pytest_plugins = ["tests.redis_fixtures"]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under CI a skipped test is a failure: nothing may pass by not running.
    if os.environ.get("CI") == "true" and _skipped and session.exitstatus == 0:
        print(f"\nCI=true: {len(_skipped)} skipped test(s) count as failures: {_skipped}")
        session.exitstatus = 1


StartHub = Callable[..., Awaitable[HubServer]]


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """Start real hubs (``await start_hub(**hub_config)``); all are stopped at teardown."""
    servers: list[HubServer] = []

    async def start(hub: Hub | None = None, **overrides: Any) -> HubServer:
        server = HubServer(hub if hub is not None else Hub(**hub_options(**overrides)))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def hub_server(start_hub: StartHub) -> HubServer:
    return await start_hub()


@pytest.fixture
async def chaos(hub_server: HubServer) -> AsyncIterator[ChaosProxy]:
    """A chaos proxy in front of ``hub_server``."""
    proxy = ChaosProxy(target=("127.0.0.1", hub_server.port))
    await proxy.start()
    yield proxy
    await proxy.stop()


class RefusingServer:
    """A real server whose WebSocket endpoint closes every session with 1008 (bad credentials)."""

    def __init__(self) -> None:
        self.attempts: list[float] = []
        self.url = ""


@pytest.fixture
async def refusing_server() -> AsyncIterator[RefusingServer]:
    refusing = RefusingServer()

    async def refuse(ws: WebSocket) -> None:
        refusing.attempts.append(time.monotonic())
        await ws.accept()
        await ws.close(code=1008, reason="invalid token")

    app = Starlette(routes=[WebSocketRoute("/ws", refuse)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="server up")
    refusing.url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/ws"
    yield refusing
    server.should_exit = True
    await task


@pytest.fixture
async def broken_hub() -> AsyncIterator[BrokenHub]:
    """A server that sends the frames a test puts in ``broken_hub.frames`` (see BrokenHub)."""
    hub = BrokenHub()
    async with serve(hub.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        hub.url = f"ws://127.0.0.1:{port}/ws"
        yield hub
