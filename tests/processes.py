"""Tether processes for tests: ``tether serve`` and friends as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

TETHER = [sys.executable, "-m", "tether.cli"]


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` now, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """A subprocess whose stdout/stderr lines are collected as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            lines.append(line.decode().rstrip("\n"))

    def json_err(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.err if line.startswith("{")]

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    async def wait(self, timeout: float = 20.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._tasks)
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._tasks)
        return code


async def spawn(*args: str) -> Proc:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *TETHER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    return Proc(proc)


async def serve(port: int, *flags: str) -> Proc:
    """``tether serve --insecure-dev`` on ``port``, returned once /healthz answers."""
    server = await spawn("serve", "--insecure-dev", "--port", str(port), *flags)
    return await serving(server, f"http://127.0.0.1:{port}/healthz")


async def spawn_script(script: Path, *args: str, env: dict[str, str] | None = None) -> Proc:
    """``python script args...`` (an example app), with extra environment variables."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    return Proc(proc)


async def serving(proc: Proc, url: str, attempts: int = 300) -> Proc:
    """``proc`` once ``url`` answers 200; killed, with its stderr, if it never does."""
    async with httpx.AsyncClient() as http:
        for _ in range(attempts):
            try:
                if (await http.get(url)).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    await proc.stop(signal.SIGKILL)
    raise AssertionError(f"{url} never answered: {proc.err}")


async def scrape(url: str) -> dict[str, float]:
    """A Prometheus ``/metrics`` page as ``{series: value}``, the series as printed
    (``tether_connections``, ``tether_client_events_total{kind="reconnect"}``)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    response.raise_for_status()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class ExampleApp:
    """``examples/<name>/app.py`` as its own process on a free port: started, SIGKILLed
    and started again on the same port (what a page left open reconnects to).

    ``ready``: a path that answers 200 once the app serves; ``metrics``: where its hub's
    ``/metrics`` is. The JSON lines each run wrote on stderr are kept across restarts.
    """

    def __init__(
        self,
        name: str,
        *flags: str,
        ready: str = "/",
        metrics: str = "/metrics",
        env: dict[str, str] | None = None,
    ) -> None:
        self.script = EXAMPLES / name / "app.py"
        self.flags = list(flags)
        self.ready = ready
        self.metrics_path = metrics
        self.env = dict(env or {})
        self.port = free_port()
        self.proc: Proc | None = None
        self._past_logs: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = ("--port", str(self.port), *self.flags)
        self.proc = await serving(
            await spawn_script(self.script, *args, env=self.env), self.url + self.ready
        )

    async def kill(self) -> None:
        if self.proc is not None:
            self._past_logs += self.proc.json_err()
            await self.proc.stop(signal.SIGKILL)
            self.proc = None

    def logs(self, event: str) -> list[dict[str, Any]]:
        """The JSON log records of ``event`` from every run so far."""
        current = self.proc.json_err() if self.proc is not None else []
        return [line for line in self._past_logs + current if line.get("event") == event]

    async def metric(self, name: str) -> float:
        """One series of the hub's ``/metrics``; fails if the hub does not expose it."""
        series = await scrape(self.url + self.metrics_path)
        assert name in series, f"{name} not in {self.metrics_path}"
        return series[name]
