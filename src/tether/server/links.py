"""How the hub writes to one client: the fast raw-transport link and the ASGI fallback.

The hub encodes each message once. When it runs under Tether's own uvicorn
WebSocket protocol (``tether.server.fastws``), it also frames each flushed
batch once and writes those same bytes straight to every subscriber's
transport: one ``write`` per subscriber per loop iteration, however many
messages the batch holds. Under any other ASGI server it falls back to a
bounded per-connection queue drained by a writer task.

Both enforce ``max_send_buffer_bytes``: past it, ``on_overflow`` is called and
the hub cuts the connection off (close 4008) instead of buffering without bound.
A resume replay is written in one burst and may alone exceed that limit (1000
messages of 1 KB is 1 MB), which would cut the client off on every resume, for
ever. So a replay grants a *grace* of its own size on top of the limit. Each
topic counts once: a topic's new replay replaces its earlier grant instead of
adding to it, so a client that re-subscribes without reading is cut off at its
second replay, and the grace never exceeds the latest replay of each subscribed
topic. The grace shrinks as the buffer drains and never grows back, so only live
backlog is held to the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, Required, TypedDict, Unpack

from websockets.frames import Frame, Opcode

from ..auth import ANONYMOUS, Identity

if TYPE_CHECKING:
    from .session import ServerSession

logger = logging.getLogger("tether.hub")

ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed WebSocket text frame (server -> client) carrying ``payload``."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class Batch:
    """Frames flushed together for one topic; their wire form is built at most once."""

    __slots__ = ("_wire", "frames")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = b"".join([ws_text_frame(f) for f in self.frames])
        return self._wire


class RawLink(Protocol):
    """A connection whose transport takes pre-framed bytes (``fastws.RawLink``)."""

    @property
    def transport(self) -> asyncio.Transport: ...
    def close(self, code: int, reason: str, *, abort_after: float | None = None) -> None: ...


class Link(Protocol):
    session: ServerSession
    identity: Identity
    address: str
    closed: bool

    def deliver(self, batch: Batch) -> None: ...
    def send_frames(self, frames: list[bytes], *, replay_of: str | None = None) -> None: ...
    def close(self, code: int, reason: str, *, abort_after: float | None = None) -> None: ...


class LinkOptions(TypedDict, total=False):
    """What every link is built with (keyword arguments of both link classes)."""

    session: Required[ServerSession]
    limit: Required[int]
    on_overflow: Required[Callable[[Link], None]]
    identity: Identity
    address: str


class _Backlog:
    """What every link shares: identity, and the send-buffer limit with its replay grace."""

    __slots__ = (
        "_replays",
        "address",
        "closed",
        "grace",
        "identity",
        "limit",
        "on_overflow",
        "session",
    )

    def __init__(
        self,
        *,
        session: ServerSession,
        limit: int,
        on_overflow: Callable[[Link], None],
        identity: Identity = ANONYMOUS,
        address: str = "",
    ) -> None:
        self.session = session
        self.address = address
        self.limit = limit
        self.on_overflow = on_overflow
        self.identity = identity
        self.closed = False
        self.grace = 0
        #: Bytes of each topic's latest replay still counted in ``grace`` (created lazily).
        self._replays: dict[str, int] | None = None

    def _grant(self, topic: str, size: int) -> None:
        """Allow ``size`` bytes of replay for ``topic`` beyond the limit, replacing its last."""
        replays = self._replays
        if replays is None:
            replays = self._replays = {}
        # The earlier grant may have shrunk with draining: subtracting all of it errs low.
        self.grace = max(0, self.grace - replays.get(topic, 0)) + size
        replays[topic] = size

    def _check_backlog(self, pending: int) -> None:
        """Call after every write with the bytes not yet sent."""
        if self.grace and pending < self.grace:
            self.grace = pending  # the replay burst is draining: shrink the allowance
            if not pending:
                self._replays = None
        if pending > self.limit + self.grace:
            self.on_overflow(self)  # type: ignore[arg-type]


class RawTransportLink(_Backlog):
    """Writes pre-framed bytes directly to the connection's asyncio transport."""

    __slots__ = ("_raw", "_transport", "preamble")

    def __init__(self, raw: RawLink, **options: Unpack[LinkOptions]) -> None:
        super().__init__(**options)
        self._raw = raw
        self._transport = raw.transport  # held directly: this is the per-delivery path
        #: Bytes written ahead of the first frames (the handshake's 101: one write, one
        #: packet, with the hub's welcome, instead of two).
        self.preamble = b""

    def __repr__(self) -> str:
        return f"<RawTransportLink {self.session.id} closed={self.closed}>"

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            return
        transport.write(data)
        pending = transport.get_write_buffer_size()
        if pending > self.limit or self.grace:  # the common case skips the method call
            self._check_backlog(pending)

    def deliver(self, batch: Batch) -> None:
        self._write(batch.wire())

    def send_frames(self, frames: list[bytes], *, replay_of: str | None = None) -> None:
        data = b"".join([ws_text_frame(f) for f in frames])
        if replay_of is not None:
            self._grant(replay_of, len(data))
        if self.preamble:
            data, self.preamble = self.preamble + data, b""
        self._write(data)

    def flush_preamble(self) -> None:
        """Write the preamble now if no frame took it along."""
        if self.preamble:
            data, self.preamble = self.preamble, b""
            self._write(data)

    def close(self, code: int, reason: str, *, abort_after: float | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self._raw.close(code, reason, abort_after=abort_after)


class QueuedLink(_Backlog):
    """A link whose frames wait in a bounded queue for a writer to drain (``_ready`` wakes
    it): the ASGI fallback below, and the fallback transport's event stream (``sse``)."""

    __slots__ = ("_close", "_queue", "_queued_bytes", "_ready")

    def __init__(self, **options: Unpack[LinkOptions]) -> None:
        super().__init__(**options)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._close: tuple[int, str] | None = None

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} {self.session.id} queued={len(self._queue)} closed={self.closed}>"

    def send_frames(self, frames: list[bytes], *, replay_of: str | None = None) -> None:
        if self.closed:
            return
        size = 0
        for frame in frames:
            self._queue.append(frame)
            size += len(frame)
        self._queued_bytes += size
        if replay_of is not None:
            self._grant(replay_of, size)
        self._ready.set()
        self._check_backlog(self._queued_bytes)

    def deliver(self, batch: Batch) -> None:
        self.send_frames(batch.frames)

    def close(self, code: int, reason: str, *, abort_after: float | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if abort_after is not None:
            # Slow consumer: what is queued would only delay the close; drop it.
            self._queue.clear()
            self._queued_bytes = 0
        self._close = (code, reason)
        self._ready.set()


class QueuedAsgiLink(QueuedLink):
    """Fallback for any ASGI server: a bounded queue drained by one writer task."""

    __slots__ = ("_send", "_task")

    def __init__(self, send: ASGISend, **options: Unpack[LinkOptions]) -> None:
        super().__init__(**options)
        self._send = send
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def _writer(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    frame = self._queue.popleft()
                    self._queued_bytes -= len(frame)
                    await self._send({"type": "websocket.send", "text": frame.decode()})
                if self._close is not None:
                    code, reason = self._close
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
                    return
        except (OSError, RuntimeError) as exc:
            # The ASGI server reports a vanished client as an error on send.
            logger.debug("writer for %s stopped: %s", self.session.id, exc)
            self.closed = True

    async def aclose(self) -> None:
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
