"""uvicorn's h11 HTTP protocol with two defences that act before any parsing.

* A deadline on the first request (slowloris): without it a client can send half
  a request line or dribble headers and hold the connection for ever. Here a
  connection must deliver one complete request (for the hub, the WebSocket
  handshake) within ``handshake_timeout`` seconds, or it is closed.
* Early refusal: an address whose handshake bucket is already empty gets a canned
  ``429`` the moment it connects, without HTTP parsing, routing or a WebSocket
  protocol object. That keeps a flood's cost per attempt small enough that
  connected clients do not feel it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

from .admission import Admission

REFUSED = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class DeadlineH11Protocol(H11Protocol):
    handshake_timeout: float = 10.0
    admission: Admission | None = None
    on_refused: Callable[[], None] | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        admission = self.admission
        if admission is not None:
            peer = transport.get_extra_info("peername")
            address = peer[0] if isinstance(peer, tuple) else ""
            if admission.exhausted(address, now=time.monotonic()):
                if self.on_refused is not None:
                    self.on_refused()
                transport.write(REFUSED)
                transport.close()
                self.transport = transport
                return
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.handshake_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing() and self not in self.connections:
            return  # refused early: nothing to parse
        super().data_received(data)

    def _expire(self) -> None:
        self._deadline = None
        handed_off = self.transport.get_protocol() is not self  # upgraded to WebSocket
        if self.cycle is None and not handed_off and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self not in self.connections:
            return  # refused early: uvicorn never tracked it
        super().connection_lost(exc)


def with_deadline(
    seconds: float,
    admission: Admission | None = None,
    on_refused: Callable[[], None] | None = None,
) -> type[DeadlineH11Protocol]:
    """A protocol class for uvicorn's ``http=`` setting (deadline, early refusal)."""
    return type(
        "GuardedH11",
        (DeadlineH11Protocol,),
        {
            "handshake_timeout": seconds,
            "admission": admission,
            "on_refused": staticmethod(on_refused) if on_refused else None,
        },
    )
