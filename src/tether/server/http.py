"""uvicorn's h11 HTTP protocol with a deadline on the first request (slowloris).

Without it a client can send half a request line or dribble headers and hold the
connection for ever. Here a connection must deliver one complete request (for the
hub, the WebSocket handshake) within ``handshake_timeout`` seconds, or it is closed.
(Floods are refused earlier still, before a protocol exists: see ``gate``.)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import h11


class DeadlineH11Protocol(H11Protocol):
    handshake_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.handshake_timeout, self._expire)

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
