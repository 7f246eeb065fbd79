"""Real multi-process clusters for tests: ``tether serve`` nodes behind nginx.

* :class:`Node` — one ``tether serve --host 127.0.0.1 --port P ...`` subprocess.
* :class:`Nginx` — ``deploy/nginx.conf`` rendered for a temp prefix and free port, in
  front of a list of node ports.
* :func:`cluster` — ``async with cluster(n=2, extra_args=[...]) as (nodes, lb)``.

Every start waits with a bounded, generous deadline and fails with the process's
stderr; every stop is by PID (nginx: its own process group, so no worker survives)
and runs in ``finally``/``__aexit__``, so a failing test leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import pytest

from .processes import TETHER, Proc, free_port

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

#: Python start-up plus the hub's; slow CI machines get plenty of slack.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _env(overrides: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(overrides or {})}


def _tail(proc: Proc | None, lines: int = 30) -> str:
    if proc is None:
        return "(not started)"
    return "\n".join([*proc.out[-lines:], *proc.err[-lines:]]) or "(no output)"


async def _reap(proc: Proc, sig: int, timeout: float) -> int:
    """Signal ``proc`` (by PID) and wait; SIGKILL if it outlives ``timeout``."""
    try:
        return await proc.stop(sig, timeout)
    except TimeoutError:
        return await proc.stop(signal.SIGKILL, timeout)


class Node:
    """A ``tether serve`` subprocess on ``127.0.0.1:port``.

    ``Node(*args, port=None, env=None)``: ``args`` are extra ``tether serve`` flags
    (``"--insecure-dev"``, ``"--redis-url", url``), ``env`` overrides environment
    variables. ``await node.start()`` returns once ``GET /healthz`` answers 200; after
    :meth:`kill` or :meth:`stop` it can be started again on the same port.
    """

    def __init__(
        self, *args: str, port: int | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.port = port if port is not None else free_port()
        self.env = dict(env or {})
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "node not started"
        return self.proc.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.returncode is None

    async def start(self, timeout: float = START_TIMEOUT) -> Self:
        if self.running:
            raise RuntimeError(f"node on port {self.port} is already running")
        if self.proc is not None:  # killed earlier: reap it before reusing the port
            await _reap(self.proc, signal.SIGKILL, STOP_TIMEOUT)
        cmd = [*TETHER, "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        process = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(self.env),
        )
        self.proc = Proc(process)
        try:
            await self._wait_healthy(timeout)
        except BaseException:
            await _reap(self.proc, signal.SIGKILL, STOP_TIMEOUT)
            raise
        return self

    async def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as http:
            while loop.time() < deadline:
                if self.proc.proc.returncode is not None:
                    raise AssertionError(
                        f"tether serve on port {self.port} exited with "
                        f"{self.proc.proc.returncode}:\n{_tail(self.proc)}"
                    )
                try:
                    response = await http.get(f"{self.url}/healthz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}"
                await asyncio.sleep(0.05)
        raise AssertionError(
            f"tether serve on port {self.port}: /healthz not 200 after {timeout} s "
            f"({last}):\n{_tail(self.proc)}"
        )

    def kill(self) -> None:
        """SIGKILL now (a crash: no drain, no close frames). Reaped by the next
        :meth:`start` / :meth:`stop` / :meth:`wait`."""
        if self.running:
            assert self.proc is not None
            self.proc.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None, "node not started"
        return await self.proc.wait(timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        return await _reap(self.proc, signal.SIGTERM, timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# --- nginx ----------------------------------------------------------------------------

_UPSTREAMS = re.compile(
    r"^([ \t]*)# tether-upstreams begin\n.*?^[ \t]*# tether-upstreams end$", re.M | re.S
)
_LISTEN = re.compile(r"^([ \t]*)listen\s[^;]*;[ \t]*# tether-listen$", re.M)
_USER = re.compile(r"^[ \t]*user\s[^;]*;.*# tether-user.*$", re.M)


def render_nginx_conf(
    template: str,
    *,
    listen_port: int,
    upstreams: Sequence[int | str],
    server_params: str = "max_fails=1 fail_timeout=10s",
) -> str:
    """``deploy/nginx.conf`` with the marked lines replaced.

    ``listen`` becomes ``127.0.0.1:listen_port``; each ``tether-upstreams`` block holds
    one ``server`` per entry of ``upstreams`` (a port on 127.0.0.1, or ``host:port``);
    the ``user`` line is dropped when not root (nginx would only warn) and becomes the
    current user when root (the default, ``nobody``, cannot enter a private temp dir).
    """
    if not upstreams:
        raise ValueError("nginx needs at least one upstream")
    for pattern, marker in ((_UPSTREAMS, "tether-upstreams"), (_LISTEN, "tether-listen")):
        if not pattern.search(template):
            raise AssertionError(f"deploy/nginx.conf lost its `# {marker}` marker")

    def servers(match: re.Match[str]) -> str:
        indent = match.group(1)
        lines = [f"{indent}# tether-upstreams begin"]
        for up in upstreams:
            address = f"127.0.0.1:{up}" if isinstance(up, int) else up
            lines.append(f"{indent}server {address} {server_params};".rstrip())
        lines.append(f"{indent}# tether-upstreams end")
        return "\n".join(lines)

    text = _UPSTREAMS.sub(servers, template)  # every upstream block lists the same nodes
    text = _LISTEN.sub(
        lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};  # tether-listen", text, count=1
    )
    if os.geteuid() == 0:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        text = _USER.sub(f"user {user} {group};  # tether-user", text, count=1)
    else:
        text = _USER.sub("# user: not root, workers run as the current user  # tether-user", text)
    return text


def nginx_binary() -> str:
    """Path of nginx. Missing: a failure under ``CI=true`` (the suite must run it),
    else a skip telling how to install it."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is not None:
        return found
    message = "nginx is not installed (run `make sysdeps`, or apt-get install nginx)"
    if os.environ.get("CI", "").lower() == "true":
        raise AssertionError(f"{message}; CI=true, so this is a failure, not a skip")
    raise pytest.skip.Exception(message)


class Nginx:
    """nginx running ``deploy/nginx.conf`` in front of ``upstreams`` (node ports).

    ``Nginx(upstreams, port=None, conf=NGINX_CONF)``: rendered into a temp prefix
    (``logs/``, ``temp/``), run as ``nginx -p PREFIX -c PREFIX/nginx.conf -e stderr
    -g 'daemon off;'`` in its own process group. ``await lb.start()`` returns once it
    accepts connections (a TCP probe: an HTTP probe would count against the upstreams'
    ``max_fails``); ``conf_text`` is the rendered configuration.
    """

    def __init__(
        self,
        upstreams: Sequence[int | str],
        *,
        port: int | None = None,
        conf: Path = NGINX_CONF,
    ) -> None:
        self.upstreams = list(upstreams)
        self.port = port if port is not None else free_port()
        self.template = conf
        self.conf_text = render_nginx_conf(
            conf.read_text(), listen_port=self.port, upstreams=self.upstreams
        )
        self.prefix: Path | None = None
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "nginx not started"
        return self.proc.proc.pid

    def proc_err(self) -> list[str]:
        """nginx's error log so far (it goes to stderr)."""
        return list(self.proc.err) if self.proc is not None else []

    def access_log(self) -> list[str]:
        assert self.prefix is not None
        path = self.prefix / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    async def start(self, timeout: float = START_TIMEOUT) -> Self:
        binary = nginx_binary()
        if self.proc is not None and self.proc.proc.returncode is None:
            raise RuntimeError("nginx is already running")
        if self.prefix is None:
            self.prefix = Path(tempfile.mkdtemp(prefix="tether-nginx-"))
            (self.prefix / "logs").mkdir()
            (self.prefix / "temp").mkdir()
            (self.prefix / "nginx.conf").write_text(self.conf_text)
        process = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.prefix / "nginx.conf"),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own group (pgid == master's PID): workers are reachable by that ID even
            # if the master dies first, so none is left holding the port.
            start_new_session=True,
        )
        self.proc = Proc(process)
        try:
            await self._wait_listening(timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.proc.returncode is not None:
                raise AssertionError(
                    f"nginx exited with {self.proc.proc.returncode}:\n{_tail(self.proc)}"
                )
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 2.0
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise AssertionError(
            f"nginx not listening on {self.port} after {timeout} s:\n{_tail(self.proc)}"
        )

    def _killpg(self) -> None:
        """SIGKILL whatever is left of nginx's own process group (by its ID)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.proc.pid, signal.SIGKILL)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (nginx's fast shutdown), SIGKILL to the group after ``timeout`` and in
        any case afterwards (a stray worker would keep the port and the output pipes);
        then removes the prefix."""
        try:
            proc = self.proc
            if proc is not None:
                try:
                    if proc.proc.returncode is None:
                        proc.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.proc.wait(), timeout)
                finally:
                    self._killpg()
                await asyncio.wait_for(proc.proc.wait(), timeout)
                await asyncio.wait_for(asyncio.gather(*proc._tasks), timeout)
        finally:
            if self.prefix is not None:
                shutil.rmtree(self.prefix, ignore_errors=True)
                self.prefix = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def cluster(
    n: int = 2,
    extra_args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[list[Node], Nginx]]:
    """``n`` nodes (``tether serve ... *extra_args``, started in parallel) behind nginx.

    Yields ``(nodes, lb)``; on exit nginx and every node are stopped, whatever happened.
    """
    nodes = [Node(*extra_args, env=env) for _ in range(n)]
    lb: Nginx | None = None
    try:
        results = await asyncio.gather(*(node.start() for node in nodes), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        lb = Nginx([node.port for node in nodes])
        await lb.start()
        yield nodes, lb
    finally:
        try:
            if lb is not None:
                await lb.stop()
        finally:
            await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)
