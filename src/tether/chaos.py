"""A chaos proxy: a TCP relay that can cut, stall or refuse connections on command.

Put it between any WebSocket client and its server to see what your app does
when the network misbehaves::

    proxy = ChaosProxy(target=("127.0.0.1", 8765))
    await proxy.start()              # listens on proxy.port
    proxy.cut()                      # reset every relayed connection (like a dropped Wi-Fi)
    proxy.stall()                    # stop forwarding bytes, no FIN (a half-open link)
    proxy.refuse()                   # reject new connections (the server "is down")
    proxy.heal()                     # back to normal

``tether chaos`` runs it from the command line, with an optional random
schedule. Tether's own tests use it to cut and stall real connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from dataclasses import dataclass

logger = logging.getLogger("tether.chaos")


class Mode(enum.StrEnum):
    PASS = "pass"
    STALL = "stall"
    REFUSE = "refuse"


@dataclass(slots=True)
class ChaosStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    stalled: int = 0


class _Pipe(asyncio.Protocol):
    """One direction-pair half: forwards what it reads to its peer's transport."""

    def __init__(self, relay: _Relay, side: str) -> None:
        self.relay = relay
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.refuse = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.refuse:
            transport.abort()  # RST: what a client sees when nothing listens

    def data_received(self, data: bytes) -> None:
        self.relay.forward(self.side, data)

    def eof_received(self) -> bool | None:
        self.relay.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class _Relay:
    """A client connection and its upstream twin."""

    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.downstream = _Pipe(self, "down")
        self.upstream = _Pipe(self, "up")
        self.pending: list[bytes] = []  # client bytes received before upstream connected
        self.stalled = False
        self.closed = False

    def forward(self, side: str, data: bytes) -> None:
        if self.stalled or self.closed:
            return  # a black hole: bytes vanish, nobody is told
        target = self.upstream if side == "down" else self.downstream
        if target.transport is None:
            self.pending.append(data)
        else:
            target.transport.write(data)

    def upstream_ready(self) -> None:
        assert self.upstream.transport is not None
        for data in self.pending:
            self.upstream.transport.write(data)
        self.pending.clear()

    def stall(self) -> None:
        self.stalled = True
        for pipe in (self.downstream, self.upstream):
            if pipe.transport is not None:
                pipe.transport.pause_reading()

    def unstall(self) -> None:
        self.stalled = False
        for pipe in (self.downstream, self.upstream):
            if pipe.transport is not None and not pipe.transport.is_closing():
                pipe.transport.resume_reading()

    def abort(self) -> None:
        for pipe in (self.downstream, self.upstream):
            if pipe.transport is not None:
                pipe.transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in (self.downstream, self.upstream):
            if pipe.transport is not None:
                pipe.transport.close()
        self.proxy._relays.discard(self)


class ChaosProxy:
    """A TCP relay to ``target`` whose connections can be cut, stalled or refused."""

    def __init__(self, *, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.mode = Mode.PASS
        self.stats = ChaosStats()
        self._relays: set[_Relay] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<ChaosProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"mode={self.mode.value} live={len(self._relays)}>"
        )

    @property
    def connections(self) -> int:
        return len(self._relays)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _accept(self) -> asyncio.Protocol:
        relay = _Relay(self)
        if self.mode is Mode.REFUSE:
            self.stats.refused += 1
            relay.closed = True
            relay.downstream.refuse = True
            return relay.downstream
        self.stats.accepted += 1
        self._relays.add(relay)
        if self.mode is Mode.STALL:
            relay.stalled = True
            self.stats.stalled += 1
            return relay.downstream  # never connects upstream: the handshake hangs
        task = asyncio.get_running_loop().create_task(self._connect_upstream(relay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return relay.downstream

    async def _connect_upstream(self, relay: _Relay) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: relay.upstream, *self.target)
        except OSError as exc:
            logger.info("upstream %s:%d unreachable: %s", *self.target, exc)
            relay.abort()
            return
        if relay.closed:
            if relay.upstream.transport is not None:
                relay.upstream.transport.abort()
            return
        relay.upstream_ready()
        if relay.stalled:
            relay.stall()

    def cut(self) -> int:
        """Reset every relayed connection (both sides see a dropped TCP connection)."""
        relays = list(self._relays)
        for relay in relays:
            relay.abort()
        self.stats.cut += len(relays)
        return len(relays)

    def stall(self) -> int:
        """Stop forwarding on every connection, and hang new ones: a half-open network."""
        self.mode = Mode.STALL
        relays = list(self._relays)
        for relay in relays:
            relay.stall()
        self.stats.stalled += len(relays)
        return len(relays)

    def resume(self) -> int:
        """Forward again, on the stalled connections too: a network that hung for a while
        and came back before anyone gave up (nothing was lost, only delayed)."""
        self.mode = Mode.PASS
        relays = [relay for relay in self._relays if relay.stalled]
        for relay in relays:
            relay.unstall()
        return len(relays)

    def refuse(self) -> None:
        """Reject new connections (existing ones are untouched; ``cut`` them too if needed)."""
        self.mode = Mode.REFUSE

    def heal(self) -> None:
        """Forward normally again. Stalled connections stay dead: the peers must notice."""
        self.mode = Mode.PASS

    async def run_schedule(
        self,
        *,
        duration: float,
        cut_every: float | None = None,
        stall_every: float | None = None,
        stall_for: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        """Random chaos for ``duration`` seconds: cuts and stalls at jittered intervals."""
        rng = rng or random.Random()
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        next_cut = loop.time() + rng.uniform(0.5, 1.5) * cut_every if cut_every else None
        next_stall = loop.time() + rng.uniform(0.5, 1.5) * stall_every if stall_every else None
        while loop.time() < end:
            await asyncio.sleep(0.1)
            now = loop.time()
            if next_cut is not None and cut_every and now >= next_cut:
                logger.warning("chaos: cut %d connection(s)", self.cut())
                next_cut = now + rng.uniform(0.5, 1.5) * cut_every
            if next_stall is not None and stall_every and now >= next_stall:
                logger.warning("chaos: stall %d connection(s) for %.1fs", self.stall(), stall_for)
                await asyncio.sleep(stall_for)
                self.heal()
                next_stall = loop.time() + rng.uniform(0.5, 1.5) * stall_every
