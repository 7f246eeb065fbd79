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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from ..errors import CloseCode

RAW_LINK_EXTENSION = "tether.raw"


class RawLink:
    """Direct access to one connection's transport, for pre-framed server frames."""

    __slots__ = ("protocol", "shutdown_reason")

    def __init__(self, protocol: TetherWSProtocol) -> None:
        self.protocol = protocol
        #: Set by the hub: makes the close reason (with retry hint) for a graceful shutdown.
        self.shutdown_reason: Callable[[], str] | None = None

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
            or link.shutdown_reason is None
            or not self.handshake_complete
            or self.close_sent
        ):
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.SERVICE_RESTART})
        self.conn.send_close(CloseCode.SERVICE_RESTART, link.shutdown_reason())
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()
