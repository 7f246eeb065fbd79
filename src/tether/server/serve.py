"""Run a hub standalone: uvicorn, Tether's WebSocket protocol, graceful restarts.

On SIGTERM/SIGINT (or :meth:`HubServer.stop`) the hub stops accepting, lets
running handlers finish for up to ``shutdown_timeout`` (their acks go out), then
every WebSocket is closed with 1012 and a randomised ``retry_after_ms`` hint
(see ``fastws``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from .fastws import TetherWSProtocol, bind_hub
from .gate import AcceptGate, listening_socket
from .http import FirstRequest, with_deadline
from .hub import Hub

logger = logging.getLogger("tether.hub")


def server_config(
    hub: Hub, *, app: Any = None, ws_path: str | None = None, log_level: str = "warning"
) -> uvicorn.Config:
    """uvicorn settings for ``hub``; ``ws_path`` is served without ASGI (default ``/ws``
    when serving the hub alone; pass e.g. ``"/rt/ws"`` for an app that mounts it there).
    """
    c = hub.config
    ws_path = direct_path(app, ws_path)
    protocol = TetherWSProtocol if ws_path is None else bind_hub(hub, ws_path)
    return uvicorn.Config(
        app if app is not None else hub.asgi(),
        host=c.host,
        port=c.port,
        ws=protocol,
        http=with_deadline(c.handshake_timeout),
        backlog=c.listen_backlog,  # see its reason in tether.config
        # Compression would force a per-connection frame: it defeats encode-once fan-out.
        ws_per_message_deflate=False,
        # Liveness is the application heartbeat, which browsers can take part in.
        ws_ping_interval=None,
        ws_max_size=c.max_frame_bytes,
        timeout_graceful_shutdown=max(1, round(c.shutdown_timeout)),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        server_header=False,
    )


def direct_path(app: Any, ws_path: str | None) -> str | None:
    """The WebSocket path the hub serves itself: ``/ws`` when it is served alone."""
    return "/ws" if app is None and ws_path is None else ws_path


class EmbeddedServer(uvicorn.Server):
    """uvicorn without signal capture: signals belong to whoever runs the loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatedServer(EmbeddedServer):
    """uvicorn behind an :class:`AcceptGate` on a socket we own (floods refused early).

    uvicorn is started with no sockets of its own, so it runs the app, lifespan and
    shutdown while the gate does the accepting.
    """

    def __init__(self, config: uvicorn.Config, hub: Hub, *, ws_path: str | None) -> None:
        super().__init__(config)
        self._hub = hub
        self._ws_path = ws_path
        self.gate: AcceptGate | None = None
        self.internal_gate: AcceptGate | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        c = self._hub.config
        sock = listening_socket(c.host, c.port, backlog=c.listen_backlog)
        try:
            await super().startup(sockets=[])
        except BaseException:
            sock.close()
            raise
        config = self.config

        def http_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        def ws_protocol() -> asyncio.Protocol:
            return config.ws_protocol_class(  # type: ignore[call-arg, misc]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        def first_request() -> asyncio.Protocol:
            assert self._ws_path is not None
            return FirstRequest(
                ws_target=b"GET " + self._ws_path.encode(),
                ws=ws_protocol,
                http=http_protocol,
                handshake_timeout=c.handshake_timeout,
            )

        # Without a path of its own (an app serving the hub over ASGI) all goes to HTTP.
        create_protocol = http_protocol if self._ws_path is None else first_request

        self.gate = AcceptGate(
            sock,
            create_protocol,
            admission=self._hub.admission,
            per_turn=c.accept_per_turn,
            on_refused=self._hub.count_refusal,
        )
        self.gate.open()
        if c.internal_port:
            internal = listening_socket(c.internal_host, c.internal_port, backlog=c.listen_backlog)
            self.internal_gate = AcceptGate(
                internal,
                create_protocol,
                admission=self._hub.admission,
                per_turn=c.accept_per_turn,
                charge=False,
            )
            self.internal_gate.open()
            logger.info("internal listener on %s:%d", c.internal_host, c.internal_port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for gate in (self.gate, self.internal_gate):
            if gate is not None:
                gate.close()  # stop accepting first, as uvicorn does with its own servers
        # Let running handlers finish and send their acks before uvicorn closes every
        # WebSocket with 1012 (a cancelled handler would run again on the client's retry).
        await self._hub.drain()
        await super().shutdown(sockets=sockets)


class HubServer:
    """A hub served over HTTP/WebSocket in this event loop; ``port=0`` picks a free port."""

    def __init__(
        self,
        hub: Hub,
        *,
        app: Any = None,
        ws_path: str | None = None,
        log_level: str = "warning",
    ) -> None:
        self.hub = hub
        config = server_config(hub, app=app, ws_path=ws_path, log_level=log_level)
        self._server = GatedServer(config, hub, ws_path=direct_path(app, ws_path))
        self._task: asyncio.Task[None] | None = None
        self._port = hub.config.port
        self._ws_path = ws_path or "/ws"

    def __repr__(self) -> str:
        return f"<HubServer {self.url} running={self._task is not None}>"

    @property
    def port(self) -> int:
        """The port actually bound (known once started; kept after stop for restarts)."""
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.hub.config.host}:{self.port}{self._ws_path}"

    @property
    def http_url(self) -> str:
        return f"http://{self.hub.config.host}:{self.port}"

    async def start(self) -> None:
        """Start serving in the background; returns once the socket is listening."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error (e.g. port in use)
                raise RuntimeError("hub server exited during startup")
            await asyncio.sleep(0.01)
        assert self._server.gate is not None
        self._port = self._server.gate.sock.getsockname()[1]
        logger.info("tether hub on %s", self.url)

    async def stop(self) -> None:
        """Graceful stop: 1012 + retry hints to every client, then close."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
