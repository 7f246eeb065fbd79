"""A real ``redis-server`` for tests: started on a free port, stopped by PID.

``RedisServer`` runs ``redis-server --port P --bind 127.0.0.1 --save "" --appendonly no
--daemonize no`` in a temporary directory (no dump can land anywhere), waits until it
answers PING, and stops it in ``stop()``/``__exit__``/``__aexit__`` so a failing test
leaves no process behind. ``restart()`` brings it back on the same port with empty data,
as a crashed Redis without persistence would come back.

Without ``redis-server`` a test is skipped, except under ``CI=true``, where it fails
(``make test`` installs it): nothing may pass there by not running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from redis.asyncio import Redis

from .processes import free_port

#: Redis starts in milliseconds; a loaded CI machine gets plenty of slack.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The ``redis-server`` executable, or skip (fail under ``CI=true``) without one."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server; make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return found


class RedisServer:
    """One ``redis-server`` subprocess on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int | None = None, *, password: str | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.password = password
        self._binary = redis_server_binary()
        self._dir = tempfile.TemporaryDirectory(prefix="tether-redis-")
        self._log_path = Path(self._dir.name) / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} pid={self.pid}>"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-4000:] or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    def start(self) -> None:
        """Start the server and return once it answers PING (fails with its log if not)."""
        if self.running:
            return
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    self._binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--dir", self._dir.name,
                    *(["--requirepass", self.password] if self.password else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers_ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self._reap()
                raise AssertionError(
                    f"redis-server on port {self.port} did not start:\n{self.log()}"
                )
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # With a password, -NOAUTH is as good a sign of life as +PONG.
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (by PID); it is reaped by ``stop``/``restart``."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGKILL)

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=STOP_TIMEOUT)
            self._proc = None

    async def stop(self) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL if it won't)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self._reap)  # waits (bounded), SIGKILL if it won't exit

    async def restart(self) -> None:
        """Stop, then start again on the same port with empty data."""
        await self.stop()
        self.start()

    async def cli(self, *args: Any) -> Any:
        """Run one command on a fresh connection and return its reply (bytes, not decoded)."""
        client = Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            protocol=2,
            socket_timeout=5.0,
        )
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    def close(self) -> None:
        self.kill()
        self._reap()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            self.close()
