"""Maestro, the task board of plan 002, on Tether (see README.md beside this file).

    python examples/maestro/app.py --port 8800            # or: make example NAME=maestro

A FastAPI app: the task list over REST, Tether mounted for real time. Creating a task
is a Tether ``send`` ("task.create"): queued in the page's outbox while the server is
away (shown as pending), sent when it is back, and run once. Once even across a server
crash between saving a task and answering: the hub's dedup window lives in this process,
so the task store itself is keyed by the message id Tether gives each send, and a retry
with that id finds its task instead of creating a second one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tether import Hub, Incoming, Reject

HERE = Path(__file__).resolve().parent
NPM = HERE.parent / "node_modules"  # react, react-dom (examples/package.json)


class TaskStore:
    """Tasks in a JSON file, keyed by the Tether message id that created each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks: dict[str, dict[str, Any]] = {}
        if path.exists():
            self.tasks = json.loads(path.read_text())

    def create(self, key: str, title: str) -> tuple[dict[str, Any], bool]:
        """The task made by message ``key``, and whether this call made it."""
        if key in self.tasks:
            return self.tasks[key], False  # a retry of a send already handled
        task = {"id": len(self.tasks) + 1, "title": title, "created_at": time.time()}
        self.tasks[key] = task
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.tasks))
        os.replace(temp, self.path)  # atomic: a crash leaves the old file or the new one
        return task, True


def create_app(store: TaskStore, *, ack_delay: float = 0.0) -> FastAPI:
    # Every setting from TETHER_* variables; the plan's heartbeat (30 s) is the default.
    hub = Hub(heartbeat_interval=float(os.environ.get("TETHER_HEARTBEAT_INTERVAL", "30")))
    app = FastAPI(lifespan=hub.lifespan)

    @hub.on("task.create")
    async def create_task(msg: Incoming) -> dict[str, Any]:
        title = str((msg.data or {}).get("title", "")).strip()
        if not title or len(title) > 200:
            raise Reject("invalid_task", "a task needs a title of 1-200 characters")
        task, made = store.create(msg.id, title)
        if made:
            await hub.publish("tasks", task)  # every open board shows it
        if ack_delay:
            await asyncio.sleep(ack_delay)  # chaos drills: a window to lose the answer in
        return task

    @app.get("/api/tasks")
    async def list_tasks() -> list[dict[str, Any]]:
        return sorted(store.tasks.values(), key=lambda t: t["id"])

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/npm", StaticFiles(directory=NPM, check_dir=False))
    app.mount("/rt", hub.asgi())  # WebSocket at /rt/ws, /rt/tether.js, /rt/healthz
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--data", type=Path, default=HERE / "tasks.json", help="the task store")
    parser.add_argument(
        "--ack-delay",
        type=float,
        default=0.0,
        help="seconds between saving a task and answering (to rehearse a lost answer)",
    )
    args = parser.parse_args()
    if not NPM.is_dir():
        raise SystemExit("examples/node_modules is missing: run `make example NAME=maestro`")
    app = create_app(TaskStore(args.data), ack_delay=args.ack_delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
