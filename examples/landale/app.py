"""Landale's stream overlays (plan 003) on Tether (see README.md beside this file).

    python examples/landale/app.py --port 8810          # or: make example NAME=landale PORT=8810

Their server was Phoenix; here a hub (mounted in a FastAPI app) carries the stream's
events, published from a background task (a stand-in for the stream's real sources).
The overlay page is SolidJS from npm, without a build step. Its client settings are the
plan's, served to the page from one place and overridable with TETHER_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tether import Hub
from tether.config import ClientConfig, browser_options, from_env

HERE = Path(__file__).resolve().parent
NPM = HERE.parent / "node_modules"  # solid-js (examples/package.json)

#: The plan's settings for overlays: max delay 30 s, a breaker that opens after 5 failed
#: attempts and probes again after 5 minutes. Each is also a TETHER_* variable.
OVERLAY = {"backoff_base": 1.0, "backoff_cap": 30.0, "max_attempts": 5, "circuit_cooldown": 300.0}


def client_options() -> dict[str, Any]:
    """The overlay's client settings, in the browser client's camelCase names."""
    config = from_env(ClientConfig, defaults=OVERLAY)  # a TETHER_* variable wins
    names = ("backoff_base", "backoff_factor", "backoff_cap", "max_attempts", "circuit_cooldown")
    return browser_options(config, names)


def create_app(*, interval: float = 1.0) -> FastAPI:
    hub = Hub()  # the plan's 30 s heartbeat: TETHER_HEARTBEAT_INTERVAL=30 (default 25 s)

    async def feed() -> None:
        rng = random.Random()
        followers = 1200
        for n in itertools.count(1):
            followers += rng.randint(0, 3)
            await hub.publish(
                "stream.stats", {"followers": followers, "viewers": rng.randint(80, 140), "n": n}
            )
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            task = asyncio.create_task(feed())
            yield
            task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def overlay() -> FileResponse:
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/overlay/config")
    async def config() -> dict[str, Any]:
        return client_options()

    app.mount("/npm", StaticFiles(directory=NPM, check_dir=False))
    app.mount("/rt", hub.asgi())
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8810)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between stream events")
    args = parser.parse_args()
    if not NPM.is_dir():
        raise SystemExit("examples/node_modules is missing: run `make example NAME=landale`")
    uvicorn.run(
        create_app(interval=args.interval), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
