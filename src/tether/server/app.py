"""The hub as an ASGI app (Starlette): ``/ws``, ``POST /publish``, ``/healthz``, ``/metrics``.

Mount it in a FastAPI/Starlette app (``app.mount("/rt", hub.asgi())``) or run it
with ``tether serve``. Under Tether's uvicorn protocol the WebSocket route uses
the raw fast path; under any other ASGI server, the queued fallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..errors import ErrorCode
from ..protocol import Topic
from .fastws import RAW_LINK_EXTENSION, RawLink
from .links import Link, QueuedAsgiLink, RawTransportLink
from .metrics import make_registry, render

if TYPE_CHECKING:
    from .hub import Hub


#: The browser modules shipped in the package, served at ``/<name>.js`` (no build step).
STATIC = Path(__file__).resolve().parent.parent / "static"


def script_route() -> Route:
    """``GET /<name>.js`` for the browser modules in :data:`STATIC`."""
    scripts = {path.stem: path for path in STATIC.glob("*.js")}

    async def script(request: Request) -> Response:
        path = scripts.get(request.path_params["name"])
        if path is None:
            return _error(404, "not_found", "no such script")
        return FileResponse(
            path, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    return Route("/{name}.js", script, methods=["GET"])


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    topic: Topic
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


_publish_decoder = msgspec.json.Decoder(PublishRequest)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def create_app(hub: Hub) -> Starlette:
    limit = hub.config.max_frame_bytes
    registry = make_registry(hub)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        session = hub.new_session()
        raw = websocket.scope.get("extensions", {}).get(RAW_LINK_EXTENSION)
        link: Link
        if isinstance(raw, RawLink):
            raw.shutdown_reason = hub.restart_reason
            link = RawTransportLink(
                raw,
                session=session,
                limit=hub.config.max_send_buffer_bytes,
                on_overflow=hub.overflow,
            )
        else:
            link = QueuedAsgiLink(
                websocket.send,
                session=session,
                limit=hub.config.max_send_buffer_bytes,
                on_overflow=hub.overflow,
            )
        hub.attach(link)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is not None:
                    hub.receive(link, text)
                else:
                    hub.receive(link, None, binary=True)
        finally:
            hub.detach(link)
            if isinstance(link, QueuedAsgiLink):
                await link.aclose()

    async def publish(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, "too_big", f"body exceeds max_frame_bytes ({limit})")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, "too_big", f"body exceeds max_frame_bytes ({limit})")
        try:
            req = _publish_decoder.decode(body)
        except msgspec.ValidationError as exc:
            return _error(400, ErrorCode.INVALID_FRAME, str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, ErrorCode.INVALID_JSON, str(exc))
        entry = hub.publish_raw(req.topic, req.data)
        epoch = hub.broker.log(req.topic).epoch
        return JSONResponse({"topic": req.topic, "offset": entry.offset, "epoch": epoch})

    async def healthz(request: Request) -> Response:
        status = "closing" if hub.closing else "ok"
        return JSONResponse(
            {"status": status, "connections": hub.connection_count, "topics": len(hub.broker)},
            status_code=503 if hub.closing else 200,
        )

    async def metrics(request: Request) -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        hub.close_all()
        await hub.aclose()

    return Starlette(
        routes=[
            WebSocketRoute("/ws", websocket_endpoint),
            Route("/publish", publish, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            script_route(),
        ],
        lifespan=lifespan,
    )
