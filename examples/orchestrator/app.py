"""The agent orchestrator's dashboard (plan 001) on Tether (see README.md beside this file).

    python examples/orchestrator/app.py --port 8820   # or: make example NAME=orchestrator PORT=8820

Their server was Node ``ws`` with a hand-written JWT check, heartbeat and per-project
subscriptions; here a hub mounted in a FastAPI app does all of it. A user signs in
(``POST /api/login``), the page keeps the JWT in ``localStorage`` and hands it to the
client, and the token's ``topics`` claim lists the user's projects: the hub refuses a
subscription to anyone else's. Story status changes, made by a background task standing
in for the agents, are published to ``project.<id>``. Logs are JSON lines on stderr,
one per connection opened and closed (with its duration).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from tether import Hub, logs
from tether.config import ClientConfig, browser_options, from_env

HERE = Path(__file__).resolve().parent
NPM = HERE.parent / "node_modules"  # react, react-dom, @tanstack/* (examples/package.json)
LIB = HERE.parent / "lib"  # React's ES-module shims (examples/lib/README.md)

#: Who may sign in, and the projects each one works on (the token's ``topics`` claim).
USERS = {"alice": (1, 2), "bob": (3,)}
PROJECTS = {1: "Checkout redesign", 2: "Search relevance", 3: "Billing migration"}
STATUSES = ("todo", "in_progress", "review", "done")
#: The plan's client settings: 1 -> 16 s backoff, 10 attempts, +-30 % jitter, a 10 s connect
#: timeout, one connection shared by all tabs. Each is also a TETHER_* variable.
PLAN = {
    "backoff_base": 1.0,
    "backoff_cap": 16.0,
    "max_attempts": 10,
    "jitter": "proportional",
    "jitter_ratio": 0.3,
    "connect_timeout": 10.0,
}
CLIENT_OPTIONS = (*PLAN, "stable_after", "circuit_cooldown")
#: A demo secret so that one command runs it; set TETHER_JWT_SECRET for anything real.
DEV_SECRET = "orchestrator-dev-secret-change-me-0123456789"


class Login(BaseModel):
    user: str


def client_options() -> dict[str, Any]:
    """The plan's client settings, in the browser client's camelCase names (env wins)."""
    options = browser_options(from_env(ClientConfig, defaults=PLAN), CLIENT_OPTIONS)
    options["shared"] = os.environ.get("ORCHESTRATOR_SHARED", "true") == "true"
    return options


def create_app(*, interval: float = 2.0, token_ttl: float = 3600.0) -> FastAPI:
    secret = os.environ.get("TETHER_JWT_SECRET", DEV_SECRET)
    # The plan's heartbeat: a ping every 30 s, a connection silent for two of them is
    # terminated (interval + timeout = 60 s). TETHER_HEARTBEAT_* override both.
    hub = Hub(
        jwt_secret=secret,
        heartbeat_interval=float(os.environ.get("TETHER_HEARTBEAT_INTERVAL", "30")),
        heartbeat_timeout=float(os.environ.get("TETHER_HEARTBEAT_TIMEOUT", "30")),
    )
    stories = {
        pid: [{"id": f"{pid}-{n}", "title": f"Story {n}", "status": "todo"} for n in range(1, 6)]
        for pid in PROJECTS
    }

    def user_of(authorization: str | None) -> str:
        """The REST API checks the same token the hub does."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        try:
            return str(jwt.decode(token, secret, algorithms=["HS256"])["sub"])
        except jwt.PyJWTError as exc:
            raise HTTPException(401, f"invalid token: {exc}") from None

    def project_of(user: str, pid: int) -> int:
        if pid not in USERS.get(user, ()):
            raise HTTPException(403, "not your project")
        return pid

    async def agents() -> None:
        rng = random.Random()
        for n in itertools.count(1):
            await asyncio.sleep(interval)
            pid = rng.choice(list(PROJECTS))
            story = rng.choice(stories[pid])
            story["status"] = STATUSES[(STATUSES.index(story["status"]) + 1) % len(STATUSES)]
            event = {
                "eventType": "story.status.changed",
                "projectId": pid,
                "story": dict(story),
                "n": n,
            }
            await hub.publish(f"project.{pid}", event)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            task = asyncio.create_task(agents())
            yield
            task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/login")
    async def login(body: Login) -> dict[str, Any]:
        if body.user not in USERS:
            raise HTTPException(401, "unknown user")
        claims = {
            "sub": body.user,
            "exp": int(time.time() + token_ttl),
            "topics": [f"project.{pid}" for pid in USERS[body.user]],
        }
        return {"token": jwt.encode(claims, secret, "HS256")}

    @app.get("/api/projects")
    async def projects(authorization: str | None = Header(None)) -> list[dict[str, Any]]:
        user = user_of(authorization)
        return [
            {
                "id": pid,
                "name": PROJECTS[pid],
                "done": sum(s["status"] == "done" for s in stories[pid]),
                "total": len(stories[pid]),
            }
            for pid in USERS[user]
        ]

    @app.get("/api/projects/{pid}/stories")
    async def project_stories(
        pid: int, authorization: str | None = Header(None)
    ) -> list[dict[str, Any]]:
        return stories[project_of(user_of(authorization), pid)]

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        return client_options()

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/npm", StaticFiles(directory=NPM, check_dir=False))
    app.mount("/lib", StaticFiles(directory=LIB))
    app.mount("/rt", hub.asgi())  # WebSocket at /rt/ws, /rt/metrics, /rt/tether.js
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8820)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between agent events")
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="seconds a sign-in lasts")
    args = parser.parse_args()
    if not NPM.is_dir():
        raise SystemExit("examples/node_modules is missing: run `make example NAME=orchestrator`")
    # Structured logs: one JSON object per line, each connection's opening and closing
    # with its duration among them (docs/operations.md).
    logs.setup(os.environ.get("ORCHESTRATOR_LOG_LEVEL", "info"), fmt="json")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    app = create_app(interval=args.interval, token_ttl=args.token_ttl)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, log_level="warning")


if __name__ == "__main__":
    main()
