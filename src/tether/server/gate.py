"""The accept loop: refuse a handshake flood before it costs a transport.

asyncio's own accept path spends, per connection, a task, a transport, a protocol
object and several loop turns before the application can even say no. Under a
flood of 1,000 handshakes a second that work lands between the hub's fan-out
turns and shows up as delivery latency for everyone already connected.

:class:`AcceptGate` owns the listening socket instead. When it becomes readable the
gate accepts at most ``per_turn`` connections (the rest wait in the kernel's
backlog, so one turn stays short) and, for each:

* charges it to its address's handshake bucket (:meth:`Admission.take`); if the
  bucket is empty, writes a canned ``429`` straight to the socket and closes it: a
  few system calls, no Python objects beyond the socket;
* otherwise hands the socket to the HTTP protocol through the public
  ``loop.connect_accepted_socket``, where the other handshake checks (origin,
  caps, token) run.

Charging at accept rather than at the handshake matters: a bucket that only
refilled one token would otherwise let every connection accepted before that
handshake is parsed through to the full HTTP path.

A refused socket's unread request bytes are drained before close so the kernel
sends FIN, not RST, and the client reads its 429 instead of a reset.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import time
from collections.abc import Callable

from .admission import Admission

logger = logging.getLogger("tether.hub")

#: Retry-After when handshake_rate is 0 (the burst is all an address ever gets): long
#: enough that refused clients don't hammer, short enough to notice a config change.
NO_REFILL_RETRY_AFTER = 60


def refusal(rate: float) -> bytes:
    """The canned 429: ``Retry-After`` is the time one token takes to refill at ``rate``."""
    retry_after = max(1, math.ceil(1 / rate)) if rate > 0 else NO_REFILL_RETRY_AFTER
    return (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n" % retry_after
    )


#: After the process runs out of file descriptors, stop accepting this long (asyncio's
#: own policy): retrying at once would spin on the same error.
ACCEPT_RETRY_DELAY = 1.0

#: Per-call non-blocking flag (Linux, BSD, macOS): saves the fcntl() that
#: setblocking(False) costs on every refused socket; elsewhere we fall back to it.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

#: accept() errors that concern only the one connection (it went away before we took it).
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH})


def somaxconn() -> int | None:
    """The kernel's cap on a listen backlog (Linux), or ``None`` where unknown."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def listening_socket(host: str, port: int, *, backlog: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (``port=0``: any free port),
    its accept queue ``backlog`` long or as long as the kernel allows."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    cap = somaxconn()
    # The kernel silently truncates a larger backlog; cap it ourselves so it is visible.
    sock = socket.create_server(
        (host, port), family=family, backlog=backlog if cap is None else min(backlog, cap)
    )
    sock.setblocking(False)
    return sock


class AcceptGate:
    """Accepts on ``sock`` in the event loop, refuses over-rate addresses, hands the rest on.

    The gate charges each accepted connection to its address's handshake bucket, so
    the handshake stage does not charge it again (:attr:`Admission.charged_on_accept`).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        admission: Admission,
        per_turn: int,
        on_refused: Callable[[], None] | None = None,  # counts each canned 429
        retry_delay: float = ACCEPT_RETRY_DELAY,
        charge: bool = True,
    ) -> None:
        """``charge=False``: an internal listener (``internal_port``) that admits every
        connection; the hub's other checks (caps, origin, credentials) still apply."""
        self.sock = sock
        self._factory = protocol_factory
        self._admission = admission
        self.refusal = refusal(admission.config.handshake_rate)
        self._per_turn = max(1, per_turn)
        self._on_refused = on_refused
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoffs: set[asyncio.Task[object]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = retry_delay
        self._charge = charge

    @property
    def paused(self) -> bool:
        """True while accepting is paused after the process ran out of descriptors."""
        return self._retry is not None

    @property
    def handing_off(self) -> int:
        """Accepted connections not yet attached to their protocol."""
        return len(self._handoffs)

    def __repr__(self) -> str:
        state = "closed" if self._loop is None else "paused" if self.paused else "open"
        return f"<AcceptGate {state} handing_off={self.handing_off}>"

    def open(self) -> None:
        """Start accepting in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._admission.charged_on_accept = True
        self._loop.add_reader(self.sock.fileno(), self.accept_ready)

    def close(self) -> None:
        """Stop accepting and close the listening socket (accepted connections live on)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._loop is not None and self.sock.fileno() != -1:
            self._loop.remove_reader(self.sock.fileno())
        self._loop = None
        self.sock.close()

    def accept_ready(self) -> None:
        """Take what the kernel holds, at most ``per_turn`` (the listening socket's reader)."""
        now = time.monotonic()
        for _ in range(self._per_turn):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                # EMFILE/ENFILE/ENOBUFS: the process is out of resources. Leave the
                # backlog in the kernel and try again later rather than spin.
                logger.error("accept failed (%s); pausing %.1f s", exc, self._retry_delay)
                self._pause()
                return
            address = peer[0] if isinstance(peer, tuple) else ""
            # A trusted proxy carries many clients: they are charged at the handshake.
            admission = self._admission
            if not self._charge or admission.is_proxy(address) or admission.take(address, now=now):
                self._hand_off(conn)
            else:
                self._refuse(conn)

    def _refuse(self, conn: socket.socket) -> None:
        if self._on_refused is not None:
            self._on_refused()
        try:
            if not _DONTWAIT:
                conn.setblocking(False)
            conn.send(self.refusal, _DONTWAIT)  # ~100 bytes into an empty send buffer
            conn.recv(65536, _DONTWAIT)  # drain the request, so close() is a FIN, not RST
        except OSError:
            pass  # the client is gone or sent nothing yet; either way we are done
        finally:
            conn.close()

    def _hand_off(self, conn: socket.socket) -> None:
        assert self._loop is not None
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets whose proto is IPPROTO_TCP, and sockets
            # from socket.create_server have proto 0: without it Nagle's algorithm and
            # the peer's delayed ACKs add up to ~40 ms to small writes (p99 2.3x).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
        self._handoffs.add(task)
        task.add_done_callback(self._handed_off)

    def _handed_off(self, task: asyncio.Task[object]) -> None:
        self._handoffs.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.debug("accepted connection failed before it started: %s", exc)

    def _pause(self) -> None:
        assert self._loop is not None  # only the reader pauses, and it runs while open
        self._loop.remove_reader(self.sock.fileno())
        self._retry = self._loop.call_later(self._retry_delay, self._resume)

    def _resume(self) -> None:
        assert self._loop is not None  # close() cancels a pending resume
        self._retry = None
        self._loop.add_reader(self.sock.fileno(), self.accept_ready)
