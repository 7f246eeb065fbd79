"""The hub as an ASGI app (Starlette): ``/ws`` (and its fallback, ``/ws/events`` with
``POST /ws/frames``), ``POST /publish``, ``/healthz``, ``/metrics``.

Mount it in a FastAPI/Starlette app (``app.mount("/rt", hub.asgi())``) or run it
with ``tether serve``. Under Tether's uvicorn protocol the WebSocket route uses
the raw fast path; under any other ASGI server, the queued fallback.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..auth import Action, AuthError, Identity
from ..errors import CloseCode, ErrorCode, ProtocolError
from ..payload import InvalidPayload
from ..protocol import Topic, decode_as
from .broker import BrokerUnavailable, TooManyTopics
from .fastws import RAW_LINK_EXTENSION, RawLink
from .links import Link, QueuedAsgiLink, RawTransportLink
from .metrics import make_registry, render
from .ports import AppHost
from .sse import EventStream, SseLink, post_frames
from .telemetry import telemetry_endpoint

#: The browser modules shipped in the package, served at ``/<name>.js`` (no build step).
STATIC = Path(__file__).resolve().parent.parent / "static"


def script_route(cors: Callable[[str | None, str | None], bool] | None = None) -> Route:
    """``GET /<name>.js`` for the browser modules in :data:`STATIC`.

    ``cors(origin, host)``: whether a page on ``origin`` may import them from another
    origin (module scripts need CORS); the hub passes its ``allowed_origins`` check, so
    a page allowed to open the WebSocket may also load the client.
    """
    scripts = {path.stem: path for path in STATIC.glob("*.js")}

    async def script(request: Request) -> Response:
        path = scripts.get(request.path_params["name"])
        if path is None:
            return _error(404, "not_found", "no such script")
        headers = {"Cache-Control": "no-cache"}
        origin = request.headers.get("origin")
        if origin is not None and cors is not None and cors(origin, request.headers.get("host")):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        return FileResponse(path, media_type="text/javascript", headers=headers)

    return Route("/{name}.js", script, methods=["GET"])


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    topic: Topic
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


_publish_decoder = msgspec.json.Decoder(PublishRequest)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def create_app(hub: AppHost, *, ws_path: str = "/ws") -> Starlette:
    limit = hub.config.max_frame_bytes
    registry = make_registry(hub)

    api_keys = frozenset(k.strip() for k in hub.config.api_keys.split(",") if k.strip())

    def publisher(request: Request) -> Identity | Response | None:
        """Who may publish: ``None`` for any topic (an API key, or ``insecure_dev``), an
        identity whose claims decide per topic (a JWT), or the 401 to answer."""
        if hub.config.insecure_dev:
            return None
        presented = request.headers.get("x-api-key", "")
        authorization = request.headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if api_keys and any(
            hmac.compare_digest(k, c) for k in api_keys for c in (presented, bearer) if c
        ):
            return None
        if bearer and hub.authenticator is not None and bearer.count(".") == 2:
            try:
                return hub.authenticator.verify(bearer)
            except AuthError as exc:
                return _error(401, ErrorCode.INVALID_TOKEN, str(exc))
        if presented or bearer:
            return _error(401, ErrorCode.INVALID_TOKEN, "not a valid API key or token")
        return _error(
            401,
            "unauthorized",
            "POST /publish needs an API key (header X-API-Key, or Authorization: Bearer) or "
            "a token with publish rights: start the hub with --api-keys KEY (TETHER_API_KEYS; "
            "Hub(api_keys=...)) and publish with `tether publish --token KEY` (TETHER_TOKEN); "
            "in development only, --insecure-dev (Hub(insecure_dev=True)) skips this",
        )

    async def websocket_endpoint(websocket: WebSocket) -> None:
        address = websocket.client.host if websocket.client else ""
        decision = hub.handshake(
            headers=dict(websocket.headers.items()),
            subprotocols=list(websocket.scope.get("subprotocols", [])),
            query=dict(websocket.query_params),
            address=address,
        )
        if decision.refusal is not None:
            await websocket.close(code=CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
            return
        await websocket.accept(subprotocol=decision.subprotocol)
        if decision.auth_error is not None:
            await websocket.close(CloseCode.POLICY_VIOLATION, decision.auth_error[:120])
            return
        session = hub.new_session()
        raw = websocket.scope.get("extensions", {}).get(RAW_LINK_EXTENSION)
        link: Link
        if isinstance(raw, RawLink):
            link = RawTransportLink(
                raw,
                session=session,
                limit=hub.config.send_buffer_limit,
                on_overflow=hub.overflow,
                identity=decision.identity,
                address=decision.address,
            )
            raw.on_shutdown = partial(hub.close_link, link)
        else:
            link = QueuedAsgiLink(
                websocket.send,
                session=session,
                limit=hub.config.send_buffer_limit,
                on_overflow=hub.overflow,
                identity=decision.identity,
                address=decision.address,
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
        # Credentials first: an anonymous caller learns nothing from how its input fails.
        who = publisher(request)
        if isinstance(who, Response):
            return who
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            # Only JSON: a cross-site <form> can POST text/plain without a CORS preflight.
            return _error(
                415, "unsupported_media_type", "POST /publish takes Content-Type: application/json"
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, "too_big", f"body exceeds max_frame_bytes ({limit})")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, "too_big", f"body exceeds max_frame_bytes ({limit})")
        try:
            req: PublishRequest = decode_as(_publish_decoder, bytes(body))
        except ProtocolError as exc:
            if exc.code == ErrorCode.INVALID_PAYLOAD:
                hub.stats.payloads_refused += 1
            return _error(400, exc.code, exc.message)
        if who is not None and not hub.allowed(who, Action.PUBLISH, req.topic):
            hub.stats.forbidden += 1
            return _error(403, ErrorCode.FORBIDDEN, f"not allowed to publish to {req.topic!r}")
        try:
            entry = await hub.publish_raw(req.topic, req.data)
        except InvalidPayload as exc:
            return _error(400, exc.code, exc.message)
        except (TooManyTopics, BrokerUnavailable) as exc:
            # Refused loudly, never dropped: the caller retries (Retry-After, seconds).
            response = _error(503, exc.code, exc.message)
            response.headers["Retry-After"] = "1"
            return response
        return JSONResponse({"topic": req.topic, "offset": entry.offset, "epoch": entry.epoch})

    async def healthz(request: Request) -> Response:
        status = "closing" if hub.closing else "ok"
        return JSONResponse(
            {"status": status, "connections": hub.connection_count, "topics": len(hub.broker)},
            status_code=503 if hub.closing else 200,
        )

    async def index(request: Request) -> Response:
        # The README's page: the browser client live on this hub, nothing to set up.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def readyz(request: Request) -> Response:
        # Ready = can serve and publish: a load balancer stops sending new clients to a
        # node that is shutting down or has lost its Redis (connected ones stay).
        if hub.closing:
            return JSONResponse({"status": "closing"}, status_code=503)
        if not hub.broker.ready:
            return JSONResponse({"status": "broker unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.drain()
        hub.close_all()
        await hub.aclose()

    telemetry = telemetry_endpoint(hub)
    #: The fallback transport's open sessions, by the secret their POST URL carries.
    sse_links: dict[str, SseLink] = {}

    return Starlette(
        routes=[
            WebSocketRoute(ws_path, websocket_endpoint),
            # The fallback lives under the WebSocket's path: clients derive it from the URL.
            Route(ws_path + "/events", EventStream(hub, sse_links), methods=["GET", "OPTIONS"]),
            Route(ws_path + "/frames", post_frames(hub, sse_links), methods=["POST", "OPTIONS"]),
            Route("/publish", publish, methods=["POST"]),
            Route("/telemetry", telemetry, methods=["POST"]),
            Route(ws_path + "/telemetry", telemetry, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/", index, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            script_route(cors=hub.origin_allowed),
        ],
        lifespan=lifespan,
    )
