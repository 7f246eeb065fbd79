"""The hub mounted inside another Starlette app, under a stock ASGI server (queued links)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tether import Hub
from tether.chaos import ChaosProxy

from ..support import Recorder, eventually, hub_options


@pytest.fixture
async def mounted() -> AsyncIterator[tuple[Hub, int]]:
    hub = Hub(**hub_options())

    async def create_order(request: Request) -> JSONResponse:
        order = await request.json()
        offset = await hub.publish("orders", order)
        return JSONResponse({"offset": offset})

    app = Starlette(
        routes=[Route("/orders", create_order, methods=["POST"]), Mount("/rt", app=hub.asgi())]
    )
    # Stock uvicorn protocol: no raw link, so the hub uses its queued ASGI fallback.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="error", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="server up")
    yield hub, server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await task


async def test_mounted_hub_delivers_and_resumes(mounted: tuple[Hub, int]) -> None:
    hub, port = mounted
    proxy = ChaosProxy(target=("127.0.0.1", port))
    await proxy.start()
    rec = Recorder(f"ws://127.0.0.1:{proxy.port}/rt/ws")
    await rec.subscribed("orders")
    for n in range(5):
        await hub.publish("orders", n)
    await eventually(lambda: len(rec.deliveries) == 5, what="live")
    proxy.cut()
    for n in range(5, 10):
        await hub.publish("orders", n)
    await eventually(lambda: len(rec.deliveries) == 10, what="resumed")
    assert rec.offsets("orders") == list(range(1, 11))
    assert [d.data for d in rec.deliveries] == list(range(10))
    await rec.close()
    await proxy.stop()
