"""uvicorn's h11 HTTP protocol with a deadline on the first request (slowloris).

Without it a client can send half a request line or dribble headers and hold the
connection for ever. Here a connection must deliver one complete request (for the
hub, the WebSocket handshake) within ``handshake_timeout`` seconds, or it is closed.
(Floods are refused earlier still, before a protocol exists: see ``gate``.)
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class DeadlineH11Protocol(H11Protocol):
    handshake_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.handshake_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        handed_off = self.transport.get_protocol() is not self  # upgraded to WebSocket
        if self.cycle is None and not handed_off and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


def with_deadline(seconds: float) -> type[DeadlineH11Protocol]:
    """A protocol class for uvicorn's ``http=`` setting."""
    return type("DeadlineH11", (DeadlineH11Protocol,), {"handshake_timeout": seconds})
