"""Tether's uvicorn WebSocket protocol: uvicorn's sans-I/O implementation plus a raw link.

It behaves exactly like uvicorn's ``websockets-sansio`` protocol for any ASGI
app, and adds two things the hub needs:

* ``scope["extensions"]["tether.raw"]``: a :class:`RawLink` to write already
  framed bytes straight to the transport. The hub uses it to frame a message
  batch once and write the same bytes to every subscriber, which is what lets
  fan-out cost one ``transport.write`` per subscriber instead of a frame
  serialisation per subscriber per message. It is only offered when no
  extension (compression) was negotiated, since compressed frames cannot be
  shared between connections.
* a graceful ``shutdown`` that closes with 1012 and the hub's randomised
  ``retry_after_ms`` hint, so a restarting fleet's clients come back spread out.

:func:`bind_hub` makes a subclass that also serves the hub's own WebSocket path
*directly*: the handshake is accepted in the protocol, frames go straight to
``hub.receive`` and the close to ``hub.detach``. No ASGI task, coroutine chain,
receive queue or Starlette ``WebSocket`` per connection: that is what keeps an
idle connection's memory under the plain ``websockets`` server's. Every other
path (and every other app) still goes through ASGI as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import parse_qsl

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request, Response

from ..errors import CloseCode
from .links import RawTransportLink

if TYPE_CHECKING:
    from .ports import ConnectionHost

RAW_LINK_EXTENSION = "tether.raw"


class RawLink:  # implements links.RawLink
    """Direct access to one connection's transport, for pre-framed server frames."""

    __slots__ = ("on_shutdown", "protocol")

    def __init__(self, protocol: TetherWSProtocol) -> None:
        self.protocol = protocol
        #: Set by the hub: closes this connection for a graceful shutdown (1012 with a
        #: retry hint) through the hub, so that nothing is delivered after the Close.
        self.on_shutdown: Callable[[], None] | None = None

    @property
    def transport(self) -> asyncio.Transport:
        return self.protocol.transport

    def close(self, code: int, reason: str, *, abort_after: float | None = None) -> None:
        """Start the closing handshake; ``abort_after`` caps how long a full buffer delays it."""
        p = self.protocol
        if p.close_sent or p.transport.is_closing():
            return
        p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        p.conn.send_close(code, reason)
        p.transport.write(b"".join(p.conn.data_to_send()))
        p.close_sent = True
        if p.read_paused:
            p.read_paused = False
            p.transport.resume_reading()
        timeout = p.close_timeout if abort_after is None else abort_after
        closer = p.transport.close if abort_after is None else p.transport.abort
        p.close_timer = p.loop.call_later(timeout, closer)


class TetherWSProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with Tether's raw link and hinted shutdown."""

    tether_link: RawLink | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was only scheduled, so the scope can still be extended.
        if self.response.status_code == 101 and not self.conn.extensions:
            self.tether_link = RawLink(self)
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[RAW_LINK_EXTENSION] = self.tether_link

    def shutdown(self) -> None:
        link = self.tether_link
        if (
            link is None
            or link.on_shutdown is None
            or not self.handshake_complete
            or self.close_sent
        ):
            super().shutdown()
            return
        self.stop_keepalive()
        # A closing handshake, not a slammed door: closing the transport right after the
        # 1012 made every client's close reply hit a closed socket (a TCP reset, which can
        # discard the 1012 and its retry hint). The transport closes when the reply comes,
        # or after close_timeout; uvicorn waits for that within its graceful timeout.
        # Through the hub: a link closed behind its back kept taking deliveries (with
        # Redis the feed goes on during a shutdown), written after the Close frame.
        link.on_shutdown()


class _Inert:
    """Stands in for the ASGI receive queue and write event of a hub-served connection.

    uvicorn's protocol creates them per connection and still pokes them on close; the
    hub never reads them, so one shared inert object frees their memory for every
    connection (an idle connection's footprint is what lets one node hold many).
    """

    def put_nowait(self, item: object) -> None:
        pass

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


_INERT: Any = _Inert()


class HubWSProtocol(TetherWSProtocol):
    """Serves ``tether_path`` for ``tether_hub`` without ASGI (see the module docstring)."""

    tether_hub: ConnectionHost
    tether_path: str
    hub_link: RawTransportLink | None = None

    def handle_connect(self, event: Request) -> None:
        if event.path.partition("?")[0] != self.tether_path:
            super().handle_connect(event)
            return
        hub = self.tether_hub
        self.handshake_initiated = True
        self.handshake_complete = True
        decision = hub.handshake(
            headers={k.lower(): v for k, v in event.headers.raw_items()},
            subprotocols=[
                token.strip()
                for header in event.headers.get_all("Sec-WebSocket-Protocol")
                for token in header.split(",")
            ],
            query=dict(parse_qsl(event.path.partition("?")[2])),
            address=self.client[0] if self.client else "",
        )
        if decision.refusal is not None:
            refusal = decision.refusal
            response = self.conn.reject(refusal.status, refusal.reason + "\n")
            if refusal.retry_after is not None:
                response.headers["Retry-After"] = str(refusal.retry_after)
            self._refuse(response)
            return
        self.request = event
        self.response = self.conn.accept(event)
        if self.response.status_code == 101 and decision.subprotocol is not None:
            self.response.headers["Sec-WebSocket-Protocol"] = decision.subprotocol
        self.conn.send_response(self.response)
        head = b"".join(self.conn.data_to_send())
        if self.response.status_code != 101 or decision.auth_error is not None:
            self.transport.write(head)
        if self.response.status_code != 101:
            self.close_sent = True
            self.transport.close()
            return
        if decision.auth_error is not None:
            # Open, then close with 1008 at once: a browser cannot read an HTTP 401.
            self.conn.send_close(CloseCode.POLICY_VIOLATION, decision.auth_error[:120])
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
            return
        # The handshake is done: its request/response and the ASGI plumbing are dead weight.
        del self.request, self.response
        self.queue = _INERT
        self.writable = _INERT
        raw = self.tether_link = RawLink(self)
        link = self.hub_link = RawTransportLink(
            raw,
            session=hub.new_session(),
            limit=hub.config.send_buffer_limit,
            on_overflow=hub.overflow,
            identity=decision.identity,
            address=decision.address,
        )
        raw.on_shutdown = partial(hub.close_link, link)
        link.preamble = head  # goes out with the welcome, in one write
        hub.attach(link)
        link.flush_preamble()

    def _refuse(self, response: Response) -> None:
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    def handle_text(self, event: Frame) -> None:
        if self.hub_link is None:
            super().handle_text(event)
        else:
            self._first_frame("text", event)

    def handle_bytes(self, event: Frame) -> None:
        if self.hub_link is None:
            super().handle_bytes(event)
        else:
            self._first_frame("bytes", event)

    def handle_ping(self) -> None:
        # A protocol-level ping is a sign of life too (non-browser clients send them).
        if self.hub_link is not None:
            self.tether_hub.touch(self.hub_link)
        super().handle_ping()

    def handle_pong(self, event: Frame) -> None:
        if self.hub_link is not None:
            self.tether_hub.touch(self.hub_link)
        super().handle_pong(event)

    def _first_frame(self, kind: Literal["text", "bytes"], event: Frame) -> None:
        self.curr_msg_data_type = kind
        self.frames = [bytes(event.data)]
        if event.fin:
            self._to_hub()

    def handle_cont(self, event: Frame) -> None:
        if self.hub_link is None:
            super().handle_cont(event)
            return
        self.frames.append(bytes(event.data))
        if event.fin:
            self._to_hub()

    def _to_hub(self) -> None:
        assert self.hub_link is not None
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            self.tether_hub.receive(self.hub_link, data)
        else:
            self.tether_hub.receive(self.hub_link, None, binary=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hub_link is not None:
            self.tether_hub.detach(self.hub_link)
            self.hub_link.closed = True
        super().connection_lost(exc)


def bind_hub(hub: ConnectionHost, path: str) -> type[HubWSProtocol]:
    """A protocol class for uvicorn that serves ``path`` for ``hub`` directly."""
    return type("BoundHubWSProtocol", (HubWSProtocol,), {"tether_hub": hub, "tether_path": path})
