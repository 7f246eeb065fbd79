"""Run a hub standalone: uvicorn, Tether's WebSocket protocol, graceful restarts.

On SIGTERM/SIGINT uvicorn stops accepting, then every WebSocket is closed with
1012 and a randomised ``retry_after_ms`` hint (see ``fastws``); the process
exits within ``shutdown_timeout``.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from .fastws import TetherWSProtocol
from .hub import Hub


def server_config(hub: Hub, *, app: Any = None, log_level: str = "warning") -> uvicorn.Config:
    c = hub.config
    return uvicorn.Config(
        app if app is not None else hub.asgi(),
        host=c.host,
        port=c.port,
        ws=TetherWSProtocol,
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


async def serve(hub: Hub, *, app: Any = None, log_level: str = "warning") -> None:
    """Serve ``hub`` (or ``app`` that mounts it) until SIGTERM/SIGINT."""
    server = uvicorn.Server(server_config(hub, app=app, log_level=log_level))
    logging.getLogger("tether.hub").info(
        "tether hub on ws://%s:%d/ws", hub.config.host, hub.config.port
    )
    await server.serve()
