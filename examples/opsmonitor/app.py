"""Ops monitor, plan 004 (resilient "/ws/updates"), on Tether (see README.md beside this file).

    python examples/opsmonitor/app.py --port 8840      # or: make example NAME=opsmonitor PORT=8840
    python examples/opsmonitor/app.py --port 8840 --env-file examples/opsmonitor/.env

A FastAPI app whose page (React from npm, no build step) shows live metric cards. A
background task publishes the metrics to the topic ``ops.metrics``; the hub is mounted at
``/`` as the last route, so the page dials ``/ws/updates`` (the plan's endpoint) and
Prometheus scrapes ``/metrics``. Every setting is an environment variable
(``.env.example`` lists them with their defaults): the hub's and the page's are Tether's
``TETHER_*`` variables, with the plan's numbers where the plan gives one; the app's own
are ``OPSMONITOR_*``. The page needs a token (HS256, ``TETHER_JWT_SECRET``), minted for it
by ``GET /api/token``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import jwt
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tether import Hub, logs
from tether.config import (
    ClientConfig,
    HubConfig,
    browser_options,
    camel,
    env_name,
    from_env,
)
from tether.server.serve import HubServer

HERE = Path(__file__).resolve().parent
NPM = HERE.parent / "node_modules"  # react, react-dom (examples/package.json)
logger = logging.getLogger("opsmonitor")

#: The plan's endpoint: the WebSocket, and its HTTP fallback under it (/ws/updates/events).
WS_PATH = "/ws/updates"
TOPIC = "ops.metrics"
DEFAULT_PORT = 8840

#: The plan's server settings (2.1, 2.5). Each is a TETHER_* variable, which wins.
HUB_PLAN: dict[str, Any] = {
    "heartbeat_interval": 30.0,  # "server sends a heartbeat every 30 s"
    "heartbeat_timeout": 30.0,  # silent for interval + timeout (two heartbeats): dead
    # "Limit handshake rate": the plan names no number; Tether's defaults, spelled out.
    "handshake_rate": 20.0,  # new connections per second per address
    "handshake_burst": 40,
}
#: The plan's reconnect schedule (2.2) for the page: 2 s x 1.5, ±0.5 s, at most 60 s,
#: the counter reset after 2 minutes connected. Each is a TETHER_* variable, which wins.
CLIENT_PLAN: dict[str, Any] = {
    "backoff_base": 2.0,
    "backoff_factor": 1.5,
    "backoff_cap": 60.0,
    "jitter": "absolute",
    "jitter_seconds": 0.5,
    "stable_after": 120.0,
}
#: The page's client settings served by /api/config (Tether's defaults where not above).
CLIENT_OPTIONS = (
    *CLIENT_PLAN,
    "max_attempts",
    "connect_timeout",
    "circuit_cooldown",
)
#: Options of the browser client only, with their defaults (the plan's open question 6.1:
#: fall back to HTTP after N failed WebSocket attempts). TETHER_* variables too.
BROWSER_OPTIONS: dict[str, Any] = {
    "transport": "auto",
    "fallback_after": 3,
    "ws_probe_interval": 30.0,
    "telemetry_interval": 30.0,
}
TRANSPORTS = ("auto", "websocket", "sse")
#: The app's own settings, with their defaults.
APP_SETTINGS: dict[str, Any] = {
    "OPSMONITOR_INTERVAL": 1.0,  # seconds between metric updates
    "OPSMONITOR_BANNER_DEBOUNCE": 5.0,  # the banner waits out blips this long (2.3, 5)
    "OPSMONITOR_BANNER_MESSAGE": "Live updates paused, attempting to reconnect…",
    "OPSMONITOR_TOKEN_TTL": 900.0,  # the page's token lifetime (refreshed at 80 %)
    "OPSMONITOR_LOG_FORMAT": "json",  # structured lifecycle logs (2.4); or "text"
    "OPSMONITOR_LOG_LEVEL": "info",  # info: every connection opened and closed
}
VIEWER_COOKIE = "opsmonitor_viewer"
VIEWER = re.compile(r"[0-9a-f]{16}")


def setting(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """An OPSMONITOR_* setting: its variable, else its default (typed like the default)."""
    env = os.environ if environ is None else environ
    default = APP_SETTINGS[name]
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected a {type(default).__name__}") from None


def client_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The page's client settings, in the browser client's camelCase names."""
    env = os.environ if environ is None else environ
    config = from_env(ClientConfig, environ=env, defaults=CLIENT_PLAN)  # TETHER_* wins
    options = browser_options(config, CLIENT_OPTIONS)
    for name, default in BROWSER_OPTIONS.items():
        raw = env.get(env_name(name))
        try:
            options[camel(name)] = default if not raw else type(default)(raw)
        except ValueError:
            kind = type(default).__name__
            raise SystemExit(f"{env_name(name)}={raw!r}: expected a {kind}") from None
    if options["transport"] not in TRANSPORTS:
        raise SystemExit(f"{env_name('transport')} must be one of {', '.join(TRANSPORTS)}")
    return options


def create_hub(*, port: int, environ: Mapping[str, str] | None = None) -> Hub:
    env = os.environ if environ is None else environ
    defaults = dict(HUB_PLAN)
    if not env.get(env_name("jwt_secret")):
        # One command without setup: a secret for this process only. The page asks for a
        # fresh token before each attempt, so it reconnects to a restarted app all the same.
        print(
            "opsmonitor: TETHER_JWT_SECRET is not set; using a random secret for this process",
            file=sys.stderr,
        )
        defaults["jwt_secret"] = secrets.token_hex(32)
    return Hub(config=from_env(HubConfig, environ=env, defaults=defaults, port=port))


def create_app(hub: Hub, environ: Mapping[str, str] | None = None) -> FastAPI:
    env = os.environ if environ is None else environ
    interval = setting("OPSMONITOR_INTERVAL", env)
    token_ttl = setting("OPSMONITOR_TOKEN_TTL", env)
    config = {
        "topic": TOPIC,
        # true: the page posts its lifecycle events beside the socket
        # (/ws/updates/telemetry); null: it reports nothing.
        "client": {**client_options(env), "telemetry": hub.config.client_telemetry or None},
        "banner": {
            "debounce": setting("OPSMONITOR_BANNER_DEBOUNCE", env),
            "message": setting("OPSMONITOR_BANNER_MESSAGE", env),
        },
    }

    async def feed() -> None:
        """The stand-in for real collectors: a random walk of four metrics."""
        rng = random.Random()
        rps, p95, errors, cpu = 420.0, 180.0, 0.004, 35.0
        for n in itertools.count(1):
            rps = min(2000.0, max(50.0, rps + rng.gauss(0, 15)))
            p95 = min(2000.0, max(20.0, p95 + rng.gauss(0, 8)))
            errors = min(0.2, max(0.0, errors + rng.gauss(0, 0.001)))
            cpu = min(100.0, max(1.0, cpu + rng.gauss(0, 2)))
            metrics = {"rps": rps, "p95_ms": p95, "error_rate": errors, "cpu": cpu}
            try:
                await hub.publish(TOPIC, {**metrics, "n": n, "at": round(time.time(), 3)})
            except Exception:  # one failed publish must not end the feed
                logger.exception("publishing metrics update %d failed", n)
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            task = asyncio.create_task(feed())
            yield
            task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/config")
    async def page_config() -> dict[str, Any]:
        return config

    @app.get("/api/token")
    async def token(request: Request, response: Response) -> dict[str, Any]:
        # Stands in for your login: whoever holds this app's session cookie is one viewer.
        # In production this endpoint sits behind your authentication.
        viewer = request.cookies.get(VIEWER_COOKIE, "")
        if not VIEWER.fullmatch(viewer):
            viewer = secrets.token_hex(8)
            response.set_cookie(VIEWER_COOKIE, viewer, httponly=True, samesite="strict")
        now = int(time.time())
        expires = now + int(token_ttl)
        claims = {"sub": f"viewer-{viewer}", "topics": [TOPIC], "iat": now, "exp": expires}
        response.headers["Cache-Control"] = "no-store"
        encoded = jwt.encode(claims, hub.config.jwt_secret, algorithm="HS256")
        return {"token": encoded, "expires_at": expires}

    app.mount("/npm", StaticFiles(directory=NPM, check_dir=False))
    # Last: the hub's WebSocket at /ws/updates (and /ws/updates/events, .../frames),
    # /metrics, /healthz, /readyz, POST /publish and its browser modules (/tether.js, ...).
    app.mount("/", hub.asgi(ws_path=WS_PATH))
    return app


def load_env_file(path: Path, environ: dict[str, str] | None = None) -> None:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes) into the environment; a
    variable already set wins over the file, as with docker compose."""
    env = os.environ if environ is None else environ
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SystemExit(f"{path}:{number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env.setdefault(key, value)


async def serve(port: int) -> None:
    hub = create_hub(port=port)
    app = create_app(hub)
    # Tether's server: its accept gate answers a handshake flood with 429 before any
    # parsing, and /ws/updates takes the fast WebSocket path.
    server = HubServer(hub, app=app, ws_path=WS_PATH)
    await server.start()
    print(f"opsmonitor on {server.http_url}/ (live updates at {WS_PATH})", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()  # graceful: 1012 and a spread retry hint to every page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, help=f"default: TETHER_PORT, else {DEFAULT_PORT}")
    parser.add_argument(
        "--env-file", type=Path, help="KEY=VALUE lines (.env.example); set variables win"
    )
    args = parser.parse_args()
    if args.env_file is not None:
        load_env_file(args.env_file)
    if not NPM.is_dir():
        raise SystemExit("examples/node_modules is missing: run `make example NAME=opsmonitor`")
    logs.setup(setting("OPSMONITOR_LOG_LEVEL"), fmt=setting("OPSMONITOR_LOG_FORMAT"))
    port = args.port or int(os.environ.get(env_name("port")) or DEFAULT_PORT)
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
