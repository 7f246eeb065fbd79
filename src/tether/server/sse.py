"""The fallback transport: server-sent events down, POST up (docs/protocol.md, Fallback
transport).

Some networks refuse WebSocket upgrades. The same sessions then run over plain HTTP:
``GET <ws path>/events`` is one session's hub -> client stream (``text/event-stream``,
one event per frame) and ``POST <ws path>/frames?s=<secret>`` carries its client -> hub
frames, one per line. The hub serves an :class:`SseLink` exactly like a WebSocket link
(``attach``, ``receive``, ``detach``, ``close``), so frames, limits, heartbeats,
permissions, dedup and close codes are the ones of the WebSocket path, by construction.

Each ``message`` event carries an ``id:`` holding the cursor of every subscription on
the stream, so a browser's plain ``EventSource``, which sends the last id back as
``Last-Event-ID`` when it reconnects by itself, resumes every topic exactly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Unpack

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import CloseCode, ErrorCode
from ..protocol import Count, Cursor, Subscribe, Subscribed, Topic, encode, message_envelope
from .links import LinkOptions, QueuedLink
from .ports import AppHost

#: Frames one POST may carry: what a client queued while its previous POST was in flight
#: (an outbox flush, a re-subscribe of many topics). Bounds the body at 16 frames of
#: ``max_frame_bytes`` each; a client sends more as further POSTs, in order.
FRAMES_PER_POST = 16
#: The ``retry:`` a stream starts with is drawn from this range (ms): plain
#: ``EventSource``s that lost the hub at once come back spread out, not together.
RETRY_MS = (1000, 5000)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_cursor_decoder = msgspec.json.Decoder(list[tuple[Topic, str, int]])
_subscribed_decoder = msgspec.json.Decoder(Subscribed)


def encode_cursors(cursors: dict[str, tuple[str, int]]) -> bytes:
    """The ``id:`` of an event: every subscription's position, opaque to the client."""
    body = msgspec.json.encode([[t, e, o] for t, (e, o) in cursors.items()])
    return base64.urlsafe_b64encode(body).rstrip(b"=")


def decode_cursors(text: str, *, limit: int) -> dict[str, Cursor]:
    """A ``Last-Event-ID`` back into cursors; anything malformed resumes nothing."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        entries = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return {}
    if len(entries) > limit:
        return {}
    cursors: dict[str, Cursor] = {}
    for topic, epoch, offset in entries:
        try:
            cursors[topic] = msgspec.convert({"epoch": epoch, "offset": offset}, Cursor)
        except msgspec.ValidationError:
            return {}
    return cursors


def _event(frame: bytes, event_id: bytes | None = None, event: bytes | None = None) -> bytes:
    parts = []
    if event is not None:
        parts.append(b"event: " + event + b"\n")
    if event_id is not None:
        parts.append(b"id: " + event_id + b"\n")
    # A published payload may hold raw line breaks (JSON whitespace): one data: line
    # each, which the client's SSE parser joins back with "\n".
    parts.extend(b"data: " + line + b"\n" for line in frame.splitlines() or [b""])
    parts.append(b"\n")
    return b"".join(parts)


def _hint_ms(reason: str) -> int | None:
    try:
        body = json.loads(reason)
    except ValueError:
        return None
    value = body.get("retry_after_ms") if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class SseLink(QueuedLink):
    """One session's event stream: a bounded queue of frames the response drains."""

    __slots__ = ("_gone", "cursors", "secret")

    def __init__(self, **options: Unpack[LinkOptions]) -> None:
        super().__init__(**options)
        #: What the session's POST URL carries: only this stream's reader learns it.
        self.secret = secrets.token_urlsafe(24)
        #: Each subscription's position as last written (the ``id:`` of each event).
        self.cursors: dict[str, tuple[str, int]] = {}
        self._gone = False

    def gone(self) -> None:
        """The client went away: stop writing."""
        self.closed = self._gone = True
        self._ready.set()

    def _track(self, frame: bytes) -> bytes | None:
        """Follow each subscription's position; the event's id, if it moved one."""
        if frame.startswith(b'{"type":"message",'):
            envelope = message_envelope(frame)
            if envelope is None:
                return None
            topic, epoch, offset = envelope
            self.cursors[topic] = (epoch, offset)
        elif frame.startswith(b'{"type":"subscribed",'):
            reply = _subscribed_decoder.decode(frame)
            known = self.cursors.get(reply.topic)
            if known is not None and known[0] == reply.epoch:
                return encode_cursors(self.cursors)  # a resume: its replay moves it on
            # Where the subscription starts: the head, less what a rewind replays (an
            # epoch change at resume replays the new epoch from its start, minus gaps).
            offset = 0 if known is not None else max(0, reply.head - reply.rewound)
            for gap in reply.missing:
                if gap.epoch == reply.epoch and gap.start == offset + 1 and gap.end is not None:
                    offset = gap.end
            self.cursors[reply.topic] = (reply.epoch, min(offset, reply.head))
        elif frame.startswith(b'{"type":"unsubscribed",'):
            topic = json.loads(frame).get("topic")
            self.cursors.pop(topic, None)
            return None
        else:
            return None
        return encode_cursors(self.cursors)

    async def stream(self, post: str) -> AsyncIterator[bytes]:
        """The response body: the preamble, then events as frames are queued, then the
        ``close`` event (if the hub closed the session)."""
        retry = random.randint(*RETRY_MS)
        preamble = msgspec.json.encode({"post": post})
        yield b"retry: %d\n\n" % retry + _event(preamble, event=b"session")
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._gone:
                return
            parts = []
            while self._queue:
                frame = self._queue.popleft()
                self._queued_bytes -= len(frame)
                parts.append(_event(frame, self._track(frame)))
            if parts:
                yield b"".join(parts)
                self._check_backlog(self._queued_bytes)
            if self._close is not None:
                code, reason = self._close
                hint = _hint_ms(reason) if code in (1012, 1013) else None
                ending = b"" if hint is None else b"retry: %d\n\n" % hint
                body = msgspec.json.encode({"code": code, "reason": reason})
                yield ending + _event(body, event=b"close")
                return


def _refusal(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    response = JSONResponse({"code": code, "message": message}, status_code=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def cors_headers(hub: AppHost, headers: Any) -> list[tuple[bytes, bytes]]:
    """``Access-Control-Allow-Origin`` for a page on another origin that ``allowed_origins``
    admits (its page may open the WebSocket, so it may use the fallback too)."""
    origin = headers.get("origin")
    if origin is None or not hub.origin_allowed(origin, headers.get("host")):
        return []
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]


async def preflight(hub: AppHost, request: Request) -> Response:
    """``OPTIONS``: the stream is fetched with an ``Authorization`` header, which a page on
    another origin may send only after this answer."""
    allow = cors_headers(hub, request.headers)
    if not allow:
        return Response(status_code=403)
    response = Response(status_code=204)
    for name, value in allow:
        response.headers[name.decode()] = value.decode()
    response.headers["Access-Control-Allow-Headers"] = "authorization, last-event-id"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


def _with_cors(response: Response, allow: list[tuple[bytes, bytes]]) -> Response:
    for name, value in allow:
        response.headers[name.decode()] = value.decode()
    return response


class EventStream:
    """``GET <ws path>/events``: open a session whose frames go down as server-sent events.

    A raw ASGI app (not a Starlette endpoint): it must notice the client leaving while
    the stream is idle, and clean up however the response ends.
    """

    def __init__(self, hub: AppHost, links: dict[str, SseLink]) -> None:
        self.hub = hub
        self.links = links

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        request = Request(scope, receive)
        if request.method == "OPTIONS":
            await (await preflight(hub, request))(scope, receive, send)
            return
        allow = cors_headers(hub, request.headers)
        decision = hub.handshake(
            headers=dict(request.headers.items()),
            subprotocols=[],
            query=dict(request.query_params),
            address=request.client.host if request.client else "",
        )
        if decision.refusal is not None:
            r = decision.refusal
            code = "overloaded" if r.status in (429, 503) else "forbidden"
            refusal = _refusal(r.status, code, r.reason, r.retry_after)
            await _with_cors(refusal, allow)(scope, receive, send)
            return
        if decision.auth_error is not None:
            refusal = _refusal(401, ErrorCode.INVALID_TOKEN, decision.auth_error)
            await _with_cors(refusal, allow)(scope, receive, send)
            return
        link = SseLink(
            session=hub.new_session(),
            limit=hub.config.send_buffer_limit,
            on_overflow=hub.overflow,
            identity=decision.identity,
            address=decision.address,
        )
        self.links[link.secret] = link
        watcher: asyncio.Task[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                        *allow,
                    ],
                }
            )
            hub.attach(link)
            self._subscribe(link, request)
            watcher = asyncio.ensure_future(self._watch(receive, link))
            async for chunk in link.stream(post="frames?s=" + link.secret):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not link._gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write (ASGI 2.4 servers raise this)
        finally:
            if watcher is not None:
                watcher.cancel()
            self.links.pop(link.secret, None)
            link.closed = True
            hub.detach(link)

    @staticmethod
    async def _watch(receive: Receive, link: SseLink) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                link.gone()
                return

    def _subscribe(self, link: SseLink, request: Request) -> None:
        """Subscriptions the request asks for: ``Last-Event-ID`` (a plain EventSource
        reconnecting by itself) resumes each topic; ``?topic=`` (``?rewind=``) adds more."""
        limit = self.hub.config.max_subscriptions
        cursors = decode_cursors(request.headers.get("last-event-id", ""), limit=limit)
        try:
            rewind = msgspec.convert(int(request.query_params.get("rewind", "0")), Count)
        except (ValueError, msgspec.ValidationError):
            rewind = 0
        frames = [encode(Subscribe(topic=t, resume=c)) for t, c in cursors.items()]
        for topic in request.query_params.getlist("topic"):
            if topic not in cursors:
                frames.append(_subscribe_frame(topic, rewind))
        for frame in frames:
            self.hub.receive(link, frame)


def _subscribe_frame(topic: str, rewind: int) -> bytes:
    # Built as JSON, not as a Subscribe struct: a bad topic must reach the session's
    # decoder and come back as an error event, like any frame a client sends.
    frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
    if rewind:
        frame["rewind"] = rewind
    return msgspec.json.encode(frame)


def post_frames(
    hub: AppHost, links: dict[str, SseLink]
) -> Callable[[Request], Awaitable[Response]]:
    """``POST <ws path>/frames?s=<secret>``: client -> hub frames of one session."""
    limit = hub.config.max_frame_bytes

    async def frames(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight(hub, request)
        allow = cors_headers(hub, request.headers)
        return _with_cors(await handle(request), allow)

    async def handle(request: Request) -> Response:
        link = links.get(request.query_params.get("s", ""))
        if link is None or link.closed:
            return _refusal(
                404,
                "no_session",
                "no such event stream: it ended (reconnect), or it is served by another hub "
                "node (the fallback transport needs session affinity at the load balancer)",
            )
        most = FRAMES_PER_POST * (limit + 2)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > most:
                return _refusal(413, "too_big", f"at most {FRAMES_PER_POST} frames per POST")
        for line in bytes(body).split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:
                continue
            if len(line) > limit:
                link.close(CloseCode.MESSAGE_TOO_BIG, "frame exceeds max_frame_bytes")
                return _refusal(413, "too_big", f"a frame exceeds max_frame_bytes ({limit})")
            hub.receive(link, line)
        return Response(status_code=204)

    return frames
