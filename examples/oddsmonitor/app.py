"""The odds and scrape monitor of plan 000, on Tether (see README.md beside this file).

    python examples/oddsmonitor/app.py --port 8830          # or: make example NAME=oddsmonitor

A FastAPI backend: events with their odds, scrape runs and the scheduler's history over
REST, and a Tether hub mounted at /rt. Background tasks publish odds updates (topic
``odds``) and scrape progress (topic ``scrape``), each as the plan's envelope
``{type, timestamp, data}``. The dashboard (index.html) is React with TanStack Query v5
from npm, without a build step; what it used to hand-write around a WebSocket (backoff,
retry counter, ping/pong, the reconnect callback, a manual retry) is Tether, configured
with the plan's numbers here, each overridable with its TETHER_* variable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tether import Hub
from tether.config import ClientConfig, HubConfig, browser_options, from_env

HERE = Path(__file__).resolve().parent
NPM = HERE.parent / "node_modules"  # react, react-dom, @tanstack/* (examples/package.json)
LIB = HERE.parent / "lib"  # the ES-module shims for React 18 (examples/lib/README.md)

#: The plan's client numbers: 1 s -> 30 s backoff, 10 retries, the retry counter reset after
#: 30 s connected. All four are Tether's defaults; they are spelled out so that the page's
#: settings are the plan's even if a default changes. A TETHER_* variable wins over each.
PLAN_CLIENT: dict[str, Any] = {
    "backoff_base": 1.0,
    "backoff_cap": 30.0,
    "max_attempts": 10,
    "stable_after": 30.0,
}
#: The plan's keepalive: a ping every 30 s, a link silent 5 s past that is dead (Tether's
#: own defaults are 25 s / 20 s). TETHER_HEARTBEAT_INTERVAL / _TIMEOUT win.
PLAN_HUB: dict[str, Any] = {"heartbeat_interval": 30.0, "heartbeat_timeout": 5.0}

MATCHES = [
    ("Arsenal", "Chelsea"),
    ("Barcelona", "Sevilla"),
    ("Inter", "Napoli"),
    ("Ajax", "PSV"),
    ("Benfica", "Porto"),
    ("Celtic", "Rangers"),
]
BOOKMAKERS = 8  # pages a scrape run visits, one progress message each


def client_options() -> dict[str, Any]:
    """Every option of the page's Tether client, in the browser client's camelCase names."""
    return browser_options(from_env(ClientConfig, defaults=PLAN_CLIENT))  # TETHER_* wins


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def envelope(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The plan's WebSocket message envelope, carried as a Tether message's data."""
    return {"type": kind, "timestamp": now_iso(), "data": data}


class Store:
    """Events, scrape runs and scheduler history; in memory, or in a JSON file (``--data``)
    so that a restart keeps them. A run that was running when the process died is marked
    interrupted when the next one starts: the dashboard learns it by refetching."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.events, self.runs, self.history = saved["events"], saved["runs"], saved["history"]
        if not self.events:
            rng = random.Random(0)
            for n, (home, away) in enumerate(MATCHES, 1):
                odds = {k: round(rng.uniform(1.5, 5.0), 2) for k in ("home", "draw", "away")}
                self.events.append({"id": n, "name": f"{home} v {away}", "version": 1, **odds})
        for run in self.runs:
            if run["status"] == "running":
                run["status"] = "interrupted"
                run["finished_at"] = now_iso()
                self.log(run, "interrupted: the server restarted")
        self.save()

    def log(self, run: dict[str, Any], outcome: str) -> None:
        """A line of the scheduler's history about ``run``."""
        self.history.append(
            {
                "id": len(self.history) + 1,
                "at": now_iso(),
                "job": "odds-scrape",
                "run_id": run["id"],
                "outcome": outcome,
            }
        )

    def active(self) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["status"] == "running"]

    def save(self) -> None:
        if self.path is None:
            return
        temp = self.path.with_suffix(".tmp")
        temp.write_text(
            json.dumps({"events": self.events, "runs": self.runs, "history": self.history})
        )
        os.replace(temp, self.path)  # atomic: a crash leaves the old file or the new one


class Monitor:
    """The background work: the odds feed, the scrape scheduler and the scrape runs."""

    def __init__(
        self, hub: Hub, store: Store, *, odds_every: float, scrape_every: float, scrape_step: float
    ) -> None:
        self.hub = hub
        self.store = store
        self.odds_every = odds_every
        self.scrape_every = scrape_every
        self.scrape_step = scrape_step
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    def start(self) -> None:
        if self.odds_every > 0:
            self._spawn(self.odds_feed())
        if self.scrape_every > 0:
            self._spawn(self.scheduler())

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def odds_feed(self) -> None:
        while True:
            await asyncio.sleep(self.odds_every)
            event = self.rng.choice(self.store.events)
            for key in ("home", "draw", "away"):
                event[key] = round(max(1.01, event[key] + self.rng.uniform(-0.2, 0.2)), 2)
            event["version"] += 1
            self.store.save()
            await self.hub.publish("odds", envelope("odds_update", dict(event)))

    async def scheduler(self) -> None:
        while True:
            await asyncio.sleep(self.scrape_every)
            if self.store.active():
                continue  # the previous run is still going: this tick is skipped
            await self.start_run("scheduler")

    async def start_run(self, trigger: str) -> dict[str, Any]:
        run = {
            "id": len(self.store.runs) + 1,
            "trigger": trigger,
            "status": "running",
            "done": 0,
            "total": BOOKMAKERS,
            "started_at": now_iso(),
            "finished_at": None,
        }
        self.store.runs.append(run)
        self.store.log(run, f"started ({trigger})")
        self.store.save()
        await self.hub.publish("scrape", envelope("scrape_started", dict(run)))
        self._spawn(self.scrape(run))
        return run

    async def scrape(self, run: dict[str, Any]) -> None:
        for _ in range(run["total"]):
            await asyncio.sleep(self.scrape_step)
            run["done"] += 1
            self.store.save()
            await self.hub.publish("scrape", envelope("scrape_progress", dict(run)))
        run["status"] = "completed"
        run["finished_at"] = now_iso()
        self.store.log(run, f"completed: {run['total']} bookmakers")
        self.store.save()
        await self.hub.publish("scrape", envelope("scrape_completed", dict(run)))


def create_app(
    store: Store,
    *,
    odds_every: float = 3.0,
    scrape_every: float = 30.0,
    scrape_step: float = 1.0,
    ws_url: str | None = None,
) -> FastAPI:
    hub = Hub(config=from_env(HubConfig, defaults=PLAN_HUB))  # TETHER_* variables win
    monitor = Monitor(
        hub, store, odds_every=odds_every, scrape_every=scrape_every, scrape_step=scrape_step
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            monitor.start()
            yield
            await monitor.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/events")
    async def events() -> list[dict[str, Any]]:
        return store.events

    @app.get("/api/scheduler/history")
    async def scheduler_history() -> list[dict[str, Any]]:
        return store.history[::-1]  # newest first

    @app.get("/api/scrape/runs")
    async def scrape_runs() -> list[dict[str, Any]]:
        return store.runs[::-1]

    @app.get("/api/scrape/runs/active")
    async def active_runs() -> list[dict[str, Any]]:
        return store.active()

    @app.post("/api/scrape/runs", status_code=201)
    async def scrape_now() -> dict[str, Any]:
        if store.active():
            raise HTTPException(409, "a scrape run is already active")
        return await monitor.start_run("manual")

    @app.get("/api/realtime")
    async def realtime() -> dict[str, Any]:
        # The page's Tether settings, from one place: the plan's, TETHER_* variables winning.
        # url: where the page dials (null: /rt/ws beside the page).
        return {"url": ws_url, "options": client_options()}

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/npm", StaticFiles(directory=NPM, check_dir=False))
    app.mount("/lib", StaticFiles(directory=LIB))
    app.mount("/rt", hub.asgi())  # WebSocket at /rt/ws, /rt/tether.js, /rt/metrics
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8830)
    parser.add_argument("--data", type=Path, help="keep events, runs and history in this JSON file")
    parser.add_argument(
        "--odds-every", type=float, default=3.0, help="seconds between odds updates (0: none)"
    )
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=30.0,
        help="seconds between scheduled scrapes (0: none)",
    )
    parser.add_argument(
        "--scrape-step", type=float, default=1.0, help="seconds per bookmaker in a scrape run"
    )
    parser.add_argument(
        "--ws-url",
        help="the WebSocket URL pages dial, when a proxy stands in front (default: /rt/ws here)",
    )
    args = parser.parse_args()
    if not NPM.is_dir():
        raise SystemExit("examples/node_modules is missing: run `make example NAME=oddsmonitor`")
    app = create_app(
        Store(args.data),
        odds_every=args.odds_every,
        scrape_every=args.scrape_every,
        scrape_step=args.scrape_step,
        ws_url=args.ws_url,
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
