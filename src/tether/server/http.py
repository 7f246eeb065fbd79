"""The first request of an accepted connection: a deadline, and the shortest path.

* :class:`DeadlineH11Protocol`: uvicorn's h11 HTTP protocol with a deadline on the
  first request (slowloris). Without it a client can send half a request line or
  dribble headers and hold the connection for ever. Here a connection must deliver
  one complete request within ``handshake_timeout`` seconds, or it is closed.
* :class:`FirstRequest`: what the accept gate hands each connection to. It reads the
  request line, and a ``GET`` of the hub's WebSocket path goes straight to the
  WebSocket protocol, whose parser (websockets') reads the handshake once; anything
  else goes to the HTTP protocol. Through uvicorn's HTTP protocol an upgrade is
  parsed by h11, re-serialised and parsed again by websockets: about a sixth of the
  hub's CPU per handshake in a reconnect storm.

(Floods are refused earlier still, before a protocol exists: see ``gate``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import h11


class DeadlineH11Protocol(H11Protocol):
    handshake_timeout: float = 10.0
    #: When the first request must be complete (loop time); default: handshake_timeout
    #: after connection_made. Set by :class:`FirstRequest`, whose wait counts too.
    deadline_at: float | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        at = self.deadline_at
        if at is None:
            at = self.loop.time() + self.handshake_timeout
        self._deadline = self.loop.call_at(at, self._expire)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The handshake arrived in time, and this protocol object is about to be left
        # behind for the WebSocket one: a pending timer would keep it (and its parser
        # state) alive for the rest of handshake_timeout.
        self._cancel_deadline()
        super().handle_websocket_upgrade(event)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is None and not self.transport.is_closing():  # no request yet
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


def with_deadline(seconds: float) -> type[DeadlineH11Protocol]:
    """A protocol class for uvicorn's ``http=`` setting."""
    return type("DeadlineH11", (DeadlineH11Protocol,), {"handshake_timeout": seconds})


#: A request line longer than this is not the hub's handshake: the HTTP protocol answers it.
MAX_REQUEST_LINE = 8192
#: A handshake's request head is read whole before the WebSocket protocol gets it, up to
#: this (h11's limit for the HTTP protocol's requests, so both paths refuse alike).
MAX_HEAD = 16384
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\ncontent-length: 31\r\n\r\nrequest head over 16384 bytes\r\n"
)


class FirstRequest(asyncio.Protocol):
    """Reads an accepted connection's request line and hands the connection on (above).

    ``ws_target`` is the request-line prefix that selects the WebSocket protocol, e.g.
    ``b"GET /ws"``; it must be followed by a space or ``?``. The whole request head must
    arrive within ``handshake_timeout``, as for a request read by the HTTP protocol.
    """

    __slots__ = ("_buffer", "_deadline", "_http", "_timeout", "_transport", "_ws", "_ws_target")

    def __init__(
        self,
        *,
        ws_target: bytes,
        ws: Callable[[], asyncio.Protocol],
        http: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
    ) -> None:
        self._ws_target = ws_target
        self._ws = ws
        self._http = http
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._timeout = handshake_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0 and len(self._buffer) < MAX_REQUEST_LINE:
            return  # the request line is not complete yet
        target = self._ws_target
        line = self._buffer[: line_end if line_end >= 0 else MAX_REQUEST_LINE]
        if not (line.startswith(target) and line[len(target) : len(target) + 1] in (b" ", b"?")):
            self._hand_over(self._http())  # which keeps a deadline of its own
        elif 0 <= self._buffer.find(b"\r\n\r\n") <= MAX_HEAD:
            self._hand_over(self._ws())  # it has no deadline of its own: it gets the whole head
        elif len(self._buffer) > MAX_HEAD:
            assert self._transport is not None
            self._transport.write(HEAD_TOO_LARGE)
            self._transport.close()

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        if self._deadline is not None:
            if isinstance(protocol, DeadlineH11Protocol):
                protocol.deadline_at = self._deadline.when()  # one deadline, not two
            self._deadline.cancel()
            self._deadline = None
        data, self._buffer = self._buffer, b""
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        protocol.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is not None:
            self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
