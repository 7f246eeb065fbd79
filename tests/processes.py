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
