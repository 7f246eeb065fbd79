"""The hub mounted inside another Starlette app, under a stock ASGI server (queued links)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
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


async def test_the_websocket_and_its_fallback_move_to_the_apps_own_path() -> None:
    # An app whose clients already dial /ws/updates (plan 004) mounts the hub there.
    hub = Hub(**hub_options())

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/status", status), Mount("/", app=hub.asgi(ws_path="/ws/updates"))]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", ws="websockets-sansio")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="server up")
    port = server.servers[0].sockets[0].getsockname()[1]
    rec = Recorder(f"ws://127.0.0.1:{port}/ws/updates")
    await rec.subscribed("ops")
    await hub.publish("ops", "up")
    await eventually(lambda: len(rec.deliveries) == 1, what="delivered on /ws/updates")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/status")).json() == {"ok": True}  # the app's own routes
        assert (await http.get("/metrics")).status_code == 200
        async with http.stream("GET", "/ws/updates/events?topic=ops") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        assert (await http.get("/ws/events")).status_code == 404  # moved, not duplicated
    await rec.close()
    server.should_exit = True
    await task


@pytest.mark.parametrize("path", ["ws", "/ws/", "/", "//ws", "/ws updates", ""])
def test_a_websocket_path_that_cannot_be_served_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="ws_path must be an absolute path"):
        Hub(**hub_options()).asgi(ws_path=path)
