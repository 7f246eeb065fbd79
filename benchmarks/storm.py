"""Reconnect storm: N WebSocket clients at once, Tether vs a plain `websockets` server.

Run ``python benchmarks/storm.py`` (about a minute) or ``--quick`` (under 10 s).

Processes, as in ``fanout.py``:

* the **server** under test (``--role tether-server`` or ``--role ws-server``, a subprocess
  pinned to CPU 0): the Tether hub (``tether.Hub`` served by ``HubServer``; default config
  except the per-address limits, lifted exactly as ``fanout.LIFTED_LIMITS``: every client comes
  from the one address of the load generator, as every client of a hub behind a proxy does),
  or a plain ``websockets`` server that answers a subscribe with one ``subscribed`` frame
  (fanout's ws-server: no compression, no pings, backlog 2048). Both publish a message to the
  ``bystander`` topic 1,000 times a second, stamped with the time it was due. Driven over
  stdin/stdout (``stats``, ``restart``, ``quit``), it reports its CPU time
  (``time.process_time()``).
* the **load generator**, this process, pinned to CPU 1: raw non-blocking TCP sockets in one
  epoll loop, the WebSocket client handshake written by hand (subprotocol ``tether.v1``), a
  frame scanner that only reads headers. It reports its own CPU: a phase where it used more
  than 85% of its core is INVALID (the client, not the server, may then be what limits it).

Two phases per server, on a fresh server process per run:

a. **cold storm**: N connects issued at once (one loop over non-blocking ``connect``), each
   sends the handshake when its TCP connection is up, then ``{"type":"subscribe",
   "topic":"storm"}`` once it has its HTTP 101. Measured: time from the first connect to the
   last 101 and to the last ``subscribed`` (Tether sends ``welcome`` first), each client's
   connect -> subscribed time, and the kernel's TCP counters (``/proc/net/netstat``:
   ``ListenOverflows``, ``ListenDrops``, ``TCPSynRetrans``) around the phase: a SYN lost from a
   full accept queue costs its client a 1 s kernel retransmit. A bystander connected before the
   storm records publish -> receive latency of the ``bystander`` topic, alone and during the
   storm (the load generator's own busyness is in that figure too).
b. **restart storm**: with all N subscribed the server restarts in its process: Tether's
   ``HubServer.stop()`` (the listener closes, every client gets 1012 with a retry hint), then a
   new hub on the same port; ``websockets``' ``Server.close()`` (1001), then ``serve()`` again.
   The clients ignore the hint and reconnect at once (the worst case); a reconnect refused
   while nothing listens waits until the server reports that it listens again, so every client
   reaches the new listener at the same moment. Measured from the new server listening (its
   ``time.monotonic()``, the same clock as the load generator's) to the last 101 and the last
   ``subscribed``, each client's time from listening to subscribed, and the same counters.

A third server, ``websockets`` with its default backlog (100), is the positive control for the
counters: an accept queue shorter than the storm loses SYNs (``--no-control`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import errno
import json
import os
import platform
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fanout import (
    LIFTED_LIMITS,
    LOADGEN_CPU,
    LOADGEN_VALID_MAX,
    OTHER_MAX,
    SERVER_CPU,
    OtherLoad,
    cpu_model,
    machine_cpu,
    percentile,
    pin,
    raise_nofile,
)

TOPIC = "storm"
BYSTANDER_TOPIC = "bystander"
BYSTANDER_RATE = 1000.0  # bystander publishes per second, in the server's loop
BYSTANDER_MAX_BURST = 200  # at most this many per wake-up (the rest are skipped)
SUBPROTOCOL = "tether.v1"
WS_BACKLOG = 2048  # fanout.py's ws-server
WS_DEFAULT_BACKLOG = 100  # websockets' (asyncio's create_server) default
RETRY_DELAY = 0.05  # a reconnect refused while the server is known to listen: retry after this
MAX_ATTEMPTS = 50  # connects per client per phase
HANDSHAKE_MAX = 16384  # bytes of a 101 response head before the client gives up on it

MSG_PREFIX = b'{"type":"message"'
SUBSCRIBED_PREFIX = b'{"type":"subscribed"'
T0_KEY = b'"t0":'
COUNTERS = ("TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPSynRetrans")
EXTRA_COUNTERS = (
    "TcpExt.SyncookiesSent",
    "TcpExt.TCPReqQFullDrop",
    "Tcp.RetransSegs",
    "TcpExt.TCPLossProbes",
    "TcpExt.TCPAbortOnClose",
    "Tcp.EstabResets",
)


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    argv: tuple[str, ...]  # the server role
    subprotocol: str | None


TETHER = Kind("tether", ("--role", "tether-server"), SUBPROTOCOL)
WEBSOCKETS = Kind("websockets", ("--role", "ws-server", "--backlog", str(WS_BACKLOG)), None)
CONTROL = Kind(
    f"websockets, backlog {WS_DEFAULT_BACKLOG}",
    ("--role", "ws-server", "--backlog", str(WS_DEFAULT_BACKLOG)),
    None,
)


@dataclasses.dataclass(frozen=True)
class Config:
    n: int
    repeats: int  # fresh server runs per kind, interleaved; the median run is reported
    timeout: float  # a phase that takes longer is INCOMPLETE
    bystander_idle: float  # seconds of bystander latency before the storm (its baseline)
    settle: float  # pause between phases


FULL = Config(n=2000, repeats=3, timeout=30.0, bystander_idle=1.0, settle=0.5)
QUICK = Config(n=500, repeats=1, timeout=15.0, bystander_idle=0.5, settle=0.3)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tcp_counters() -> dict[str, int]:
    """Every ``Prefix.Name`` counter of /proc/net/netstat and /proc/net/snmp (machine-wide)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with contextlib.suppress(OSError):
            lines = Path(path).read_text().splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                prefix, _, names = head.partition(":")
                _, _, nums = values.partition(":")
                for name, num in zip(names.split(), nums.split(), strict=False):
                    with contextlib.suppress(ValueError):
                        out[f"{prefix}.{name}"] = int(num)
    return out


def sysctl(name: str) -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    return "?"


# --- server side (subprocess, CPU 0) --------------------------------------------------------


class TetherSide:
    def __init__(self) -> None:
        self.port = 0
        self.up = False
        self.hub: Any = None
        self.server: Any = None

    async def start(self, port: int) -> None:
        from tether import Hub
        from tether.server.serve import HubServer

        self.hub = Hub(host="127.0.0.1", port=port, **LIFTED_LIMITS)
        self.server = HubServer(self.hub)
        await self.server.start()
        self.port = self.server.port
        self.up = True

    async def stop(self) -> None:
        self.up = False
        await self.server.stop()  # 1012 + retry hint to every client

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self.hub.publish_nowait(topic, data)

    def conns(self) -> int:
        return int(self.hub.connection_count)


class WsSide:
    """fanout.py's ws-server, with topics (the bystander has its own)."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.port = 0
        self.up = False
        self.server: Any = None
        self.topics: dict[str, set[Any]] = {}
        self.epoch = os.urandom(6).hex()
        self.offset = 0

    async def handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        joined: list[str] = []
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "subscribe":
                    topic = frame["topic"]
                    self.topics.setdefault(topic, set()).add(ws)
                    joined.append(topic)
                    reply = {"type": "subscribed", "topic": topic, "epoch": self.epoch}
                    await ws.send(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            for topic in joined:
                self.topics[topic].discard(ws)

    async def start(self, port: int) -> None:
        from websockets.asyncio.server import serve

        self.server = await serve(
            self.handler,
            "127.0.0.1",
            port,
            compression=None,
            ping_interval=None,
            backlog=self.backlog,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.up = True

    async def stop(self) -> None:
        self.up = False
        self.server.close()  # close_connections=True: 1001 to every client
        await self.server.wait_closed()

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        from websockets.asyncio.server import broadcast

        self.offset += 1
        frame = json.dumps(
            {
                "type": "message",
                "topic": topic,
                "epoch": self.epoch,
                "offset": self.offset,
                "ts": int(time.time() * 1000),
                "data": data,
            },
            separators=(",", ":"),
        )
        broadcast(self.topics.get(topic, set()), frame, text=True)

    def conns(self) -> int:
        return len(self.topics.get(TOPIC, ()))


def _reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def server_main(role: str, backlog: int) -> None:
    side: TetherSide | WsSide = TetherSide() if role == "tether-server" else WsSide(backlog)
    await side.start(0)

    async def bystander() -> None:
        # Each message carries its *scheduled* time: a wake-up the storm delays shows as
        # latency (the loop stall any publish would wait out), not as a lower rate.
        origin = time.time()
        done = 0
        while True:
            await asyncio.sleep(1 / BYSTANDER_RATE)
            due = int((time.time() - origin) * BYSTANDER_RATE)
            if not side.up:
                done = due  # nothing is owed for the time the server was down
                continue
            for k in range(done + 1, min(due, done + BYSTANDER_MAX_BURST) + 1):
                side.publish(BYSTANDER_TOPIC, {"t0": origin + k / BYSTANDER_RATE})
            done = due

    task = asyncio.create_task(bystander())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"ready": True, "port": side.port, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.decode().strip()
        if cmd == "stats":
            _reply({"cpu": time.process_time(), "mono": time.monotonic(), "conns": side.conns()})
        elif cmd == "restart":
            t0 = time.monotonic()
            port = side.port
            await side.stop()
            stopped = time.monotonic()
            side = TetherSide() if role == "tether-server" else WsSide(backlog)
            await side.start(port)
            listening = time.monotonic()
            _reply({"listening": listening, "down_s": listening - t0, "stop_s": stopped - t0})
        elif cmd == "quit":
            _reply({"bye": True})
            break
    task.cancel()
    sys.stdout.flush()
    os._exit(0)  # disposable: skip the graceful close of thousands of sockets


class ServerProc:
    """A server subprocess pinned to CPU 0; its stdout read with ``os.read`` so the load
    generator's epoll loop can watch it too (``fd``, :meth:`feed`)."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *kind.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.lines: collections.deque[dict[str, Any]] = collections.deque()
        try:
            hello = self.read(timeout=30)
        except BaseException:
            self.stop()
            raise
        self.port: int = hello["port"]

    def feed(self) -> None:
        """Read what the server wrote (call when ``fd`` is readable)."""
        data = os.read(self.fd, 65536)
        if not data:
            raise RuntimeError(f"{self.kind.name} server exited (rc={self.proc.poll()})")
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(json.loads(line))

    def read(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.lines:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.kind.name} server did not answer in {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.feed()
        return self.lines.popleft()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def cmd(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        self.send(line)
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
                self.cmd("quit", timeout=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --- load generator (this process, CPU 1) ---------------------------------------------------


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client->server frame, masked as RFC 6455 requires."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + body


def frame_at(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """The server frame at ``pos``: (opcode, payload start, end), or None if incomplete.

    Server frames are unmasked; only the header is read."""
    n = len(data)
    if pos + 2 > n:
        return None
    length = data[pos + 1] & 0x7F
    start = pos + 2
    if length == 126:
        if pos + 4 > n:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 4
    elif length == 127:
        if pos + 10 > n:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start = pos + 10
    end = start + length
    return None if end > n else (data[pos] & 0x0F, start, end)


CONNECTING, HANDSHAKE, OPEN, WAITING, CLOSED = range(5)


class Client:
    __slots__ = (
        "attempts",
        "buf",
        "bystander",
        "fd",
        "round",
        "sock",
        "state",
        "t_101",
        "t_start",
        "t_sub",
    )

    def __init__(self, round_: int, *, bystander: bool = False) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CLOSED
        self.buf = b""
        self.round = round_
        self.attempts = 0
        self.t_start = 0.0  # monotonic time of this round's first connect
        self.t_101 = -1.0
        self.t_sub = -1.0
        self.bystander = bystander


class Fleet:
    """The N clients (and a bystander) on raw non-blocking sockets, one epoll loop."""

    def __init__(self, port: int, subprotocol: str | None) -> None:
        self.addr = ("127.0.0.1", port)
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        key = base64.b64encode(os.urandom(16)).decode()  # one key for all: servers only hash it
        proto = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
        self.request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{proto}\r\n"
        ).encode()
        self.subscribe = masked_frame(1, json.dumps({"type": "subscribe", "topic": TOPIC}).encode())
        self.subscribe_bystander = masked_frame(
            1, json.dumps({"type": "subscribe", "topic": BYSTANDER_TOPIC}).encode()
        )
        self.round = 0
        self.reconnect = False  # restart phase: a client closed by the server reconnects
        self.listening = True  # False while the server restarts (refused connects wait)
        self.waiting: list[Client] = []  # refused while nothing listened
        self.retry: collections.deque[tuple[float, Client]] = collections.deque()
        self.n101 = 0  # this round
        self.nsub = 0
        self.failed = 0
        self.refused = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[int] = collections.Counter()
        self.first_close = 0.0
        self.sampling = False
        # The bystander's messages: (due time, publish -> receive latency), wall seconds.
        self.samples: list[tuple[float, float]] = []

    def begin_round(self) -> None:
        self.round += 1
        self.n101 = self.nsub = self.failed = self.refused = 0
        self.errors.clear()
        self.close_codes.clear()
        self.first_close = 0.0

    def open(self, c: Client) -> None:
        """Start one (re)connect of ``c``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        c.sock = sock
        c.fd = sock.fileno()
        c.buf = b""
        c.attempts += 1
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            c.state = CLOSED
            self._connect_failed(c, err)
            return
        c.state = CONNECTING
        self.by_fd[c.fd] = c
        self.ep.register(c.fd, select.EPOLLOUT)

    def drop(self, c: Client) -> None:
        if c.sock is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(c.fd)
        self.by_fd.pop(c.fd, None)
        c.sock.close()
        c.sock = None
        c.state = CLOSED

    def _fail(self, c: Client, reason: str) -> None:
        if not c.bystander:
            self.failed += 1
        self.errors[reason] += 1

    def _connect_failed(self, c: Client, err: int) -> None:
        if self.reconnect and err == errno.ECONNREFUSED and c.attempts < MAX_ATTEMPTS:
            self.refused += 1
            c.state = WAITING
            if self.listening:
                self.retry.append((time.monotonic() + RETRY_DELAY, c))
            else:
                self.waiting.append(c)
            return
        self._fail(c, errno.errorcode.get(err, str(err)))

    def server_listening(self) -> None:
        """The restarted server listens: every client refused meanwhile connects now."""
        self.listening = True
        waiting, self.waiting = self.waiting, []
        for c in waiting:
            self.open(c)

    def _writable(self, c: Client) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                c.sock.send(self.request)  # ~200 bytes into an empty buffer: all of it
            except OSError as exc:
                err = exc.errno or errno.EIO
        if err:
            self.drop(c)
            self._connect_failed(c, err)
            return
        c.state = HANDSHAKE
        self.ep.modify(c.fd, select.EPOLLIN)

    def _readable(self, c: Client) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(c, None)
            return
        if c.state == HANDSHAKE:
            data = c.buf + data
            c.buf = b""
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > HANDSHAKE_MAX:
                    self.drop(c)
                    self._fail(c, "oversized response head")
                else:
                    c.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.drop(c)
                self._fail(c, data[:12].decode(errors="replace"))
                return
            c.t_101 = time.monotonic()
            if not c.bystander:
                self.n101 += 1
            c.state = OPEN
            try:
                c.sock.send(self.subscribe_bystander if c.bystander else self.subscribe)
            except OSError:
                self._closed(c, None)
                return
            data = data[end + 4 :]
            if not data:
                return
        self._frames(c, data)

    def _frames(self, c: Client, data: bytes) -> None:
        if c.buf:
            data = c.buf + data
            c.buf = b""
        pos = 0
        while (frame := frame_at(data, pos)) is not None:
            opcode, start, end = frame
            if opcode == 1:
                if c.t_sub < 0 and data.startswith(SUBSCRIBED_PREFIX, start):
                    c.t_sub = time.monotonic()
                    if not c.bystander:
                        self.nsub += 1
                elif c.bystander and self.sampling and data.startswith(MSG_PREFIX, start):
                    i = data.find(T0_KEY, start, end) + len(T0_KEY)
                    j = data.find(b"}", i, end)
                    with contextlib.suppress(ValueError):
                        due = float(data[i:j])
                        self.samples.append((due, time.time() - due))
            elif opcode == 8:  # close: answer it (code only), then reconnect or count
                code = int.from_bytes(data[start : start + 2], "big") if end - start >= 2 else 1005
                self._closed(c, code)
                return
            pos = end
        if pos < len(data):
            c.buf = data[pos:]

    def _closed(self, c: Client, code: int | None) -> None:
        if code is not None:
            self.close_codes[code] += 1
            if c.sock is not None:
                with contextlib.suppress(OSError):
                    c.sock.send(masked_frame(8, code.to_bytes(2, "big")))
        if not self.first_close:
            self.first_close = time.monotonic()
        self.drop(c)
        if c.bystander:
            return
        if self.reconnect and c.round < self.round:  # closed by the restart: come back now
            c.round = self.round
            c.attempts = 0
            c.t_101 = c.t_sub = -1.0
            c.t_start = time.monotonic()
            self.open(c)
        else:
            self._fail(c, f"closed ({code})" if code is not None else "closed (no close frame)")

    def done(self, n: int) -> bool:
        return self.nsub + self.failed >= n

    def run(
        self,
        until: Callable[[], bool],
        deadline: float,
        extra: dict[int, Callable[[], None]] | None = None,
    ) -> None:
        """The epoll loop, until ``until()`` or ``deadline``; ``extra``: other fds to watch."""
        poll = self.ep.poll
        by_fd = self.by_fd
        for fd in extra or ():
            self.ep.register(fd, select.EPOLLIN)
        try:
            while not until():
                now = time.monotonic()
                if now >= deadline:
                    return
                timeout = min(0.05, deadline - now)
                if self.retry:
                    timeout = max(0.0, min(timeout, self.retry[0][0] - now))
                for fd, _ in poll(timeout):
                    if extra is not None and fd in extra:
                        extra[fd]()
                        continue
                    c = by_fd.get(fd)
                    if c is None:
                        continue
                    if c.state == CONNECTING:
                        self._writable(c)
                    else:
                        self._readable(c)
                now = time.monotonic()
                while self.retry and self.retry[0][0] <= now:
                    self.open(self.retry.popleft()[1])
        finally:
            for fd in extra or ():
                with contextlib.suppress(OSError, ValueError):
                    self.ep.unregister(fd)

    def close_all(self) -> None:
        for c in list(self.by_fd.values()):
            self.drop(c)
        self.ep.close()


# --- orchestration --------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    server: str
    phase: str  # "cold" or "restart"
    n: int
    all_101_s: float = float("nan")  # from the phase's start (cold) / the new listener (restart)
    all_sub_s: float = float("nan")
    p50_ms: float = float("nan")  # per client: connect (cold) / listening (restart) -> subscribed
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    subscribed: int = 0
    failed: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: int = 0  # restart: connects refused while the server was down
    close_codes: dict[int, int] = dataclasses.field(default_factory=dict)
    down_s: float = float("nan")  # restart: command -> new listener
    outage_s: float = float("nan")  # restart: first close seen -> all re-subscribed
    issue_s: float = float("nan")  # cold: time to issue the N connects
    server_cpu_s: float = 0.0
    loadgen_cpu_pct: float = 0.0
    other_pct: float = 0.0
    other_top: str = ""  # the biggest other processes in the window
    bystander_idle: list[float] = dataclasses.field(default_factory=list)  # cold only
    bystander_storm: list[float] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.subscribed == self.n

    @property
    def valid(self) -> bool:
        return self.loadgen_cpu_pct <= LOADGEN_VALID_MAX * 100

    @property
    def disturbed(self) -> bool:
        return self.other_pct > OTHER_MAX

    @property
    def verdict(self) -> str:
        out = "ok" if self.complete else f"INCOMPLETE ({self.subscribed} of {self.n})"
        if not self.valid:
            out += f" INVALID (load gen > {LOADGEN_VALID_MAX * 100:.0f}%)"
        if self.disturbed:
            out += f" DISTURBED (other load {self.other_pct:.0f}%: {self.other_top})"
        return out


def finish(
    ph: Phase,
    clients: Sequence[Client],
    origin: Callable[[Client], float],
    fleet: Fleet,
    ctr0: dict[str, int],
    ctr1: dict[str, int],
) -> None:
    ok = [c for c in clients if c.t_sub >= 0]
    ph.subscribed = len(ok)
    ph.failed = fleet.failed
    ph.errors = dict(fleet.errors)
    ph.refused = fleet.refused
    ph.close_codes = dict(fleet.close_codes)
    ph.counters = {k: ctr1.get(k, 0) - ctr0.get(k, 0) for k in (*COUNTERS, *EXTRA_COUNTERS)}
    if ph.complete:
        ph.all_sub_s = max(c.t_sub - origin(c) for c in clients)
    if all(c.t_101 >= 0 for c in clients):
        ph.all_101_s = max(c.t_101 - origin(c) for c in clients)
    per = sorted(c.t_sub - c.t_start for c in ok)
    ph.p50_ms = percentile(per, 0.50) * 1000
    ph.p99_ms = percentile(per, 0.99) * 1000
    ph.max_ms = per[-1] * 1000 if per else float("nan")


def bystander_window(fleet: Fleet, w0: float, w1: float) -> list[float]:
    """The sorted latencies of the bystander's messages due in [w0, w1] (wall clock).

    Selected by due time, not arrival, so the messages a stalled server delivers after the
    window are in it: receiving goes on until one due after ``w1`` arrives (at most 2 s).
    """
    fleet.run(lambda: any(due > w1 for due, _ in fleet.samples[-5:]), time.monotonic() + 2.0)
    out = sorted(lat for due, lat in fleet.samples if w0 <= due <= w1)
    fleet.samples = []
    return out


def cold(server: ServerProc, fleet: Fleet, cfg: Config) -> tuple[Phase, list[Client]]:
    ph = Phase(server.kind.name, "cold", cfg.n)
    # The bystander: connected and subscribed first (this also warms the server's lazy paths).
    by = Client(fleet.round, bystander=True)
    fleet.open(by)
    fleet.run(lambda: by.t_sub >= 0, time.monotonic() + 10)
    if by.t_sub < 0:
        raise RuntimeError(f"{server.kind.name}: the bystander never got `subscribed`")
    fleet.sampling = True
    w0 = time.time()
    fleet.run(lambda: False, time.monotonic() + cfg.bystander_idle)
    ph.bystander_idle = bystander_window(fleet, w0, time.time())

    fleet.begin_round()
    clients = [Client(fleet.round) for _ in range(cfg.n)]
    ctr0 = tcp_counters()
    s0 = server.cmd("stats")
    exclude = {os.getpid(), server.pid}
    other = OtherLoad(exclude)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    w0 = time.time()
    for c in clients:  # all at once: nothing waits for anything before the last connect
        c.t_start = time.monotonic()
        fleet.open(c)
    ph.issue_s = time.monotonic() - t0
    fleet.run(lambda: fleet.done(cfg.n), t0 + cfg.timeout)
    t1 = time.monotonic()
    w1 = time.time()
    cpu1 = time.process_time()
    other_s = other.seconds()
    ph.bystander_storm = bystander_window(fleet, w0, w1)
    fleet.sampling = False
    s1 = server.cmd("stats")
    ctr1 = tcp_counters()
    finish(ph, clients, lambda _c: t0, fleet, ctr0, ctr1)
    ph.server_cpu_s = s1["cpu"] - s0["cpu"]
    span = t1 - t0
    ph.loadgen_cpu_pct = 100 * (cpu1 - cpu0) / span
    ph.other_pct = 100 * other_s / span
    ph.other_top = ", ".join(other.top)
    fleet.drop(by)  # the restart would close it anyway
    return ph, clients


def restart(server: ServerProc, fleet: Fleet, clients: list[Client], cfg: Config) -> Phase:
    ph = Phase(server.kind.name, "restart", cfg.n)
    fleet.begin_round()
    fleet.reconnect = True
    fleet.listening = False
    listen: dict[str, float] = {}

    def on_server() -> None:
        server.feed()
        while server.lines:
            msg = server.lines.popleft()
            if "listening" in msg:
                listen.update(
                    at=msg["listening"],
                    down=msg["down_s"],
                    seen=time.monotonic(),
                    cpu=time.process_time(),
                )
                fleet.server_listening()

    ctr0 = tcp_counters()
    s0 = server.cmd("stats")
    exclude = {os.getpid(), server.pid}
    other = OtherLoad(exclude)
    t0 = time.monotonic()
    server.send("restart")
    try:
        fleet.run(lambda: fleet.done(cfg.n), t0 + cfg.timeout, {server.fd: on_server})
    finally:
        fleet.reconnect = False
        fleet.listening = True
    t1 = time.monotonic()
    cpu1 = time.process_time()
    other_s = other.seconds()
    if "at" not in listen:  # the loop gave up before the server answered: wait for it here
        msg = server.read(timeout=30)
        listen.update(at=msg["listening"], down=msg["down_s"], seen=t1, cpu=cpu1)
    s1 = server.cmd("stats")
    ctr1 = tcp_counters()
    at = listen["at"]
    for c in clients:  # per client: from the new listener (all of them connect after it)
        c.t_start = at
    finish(ph, clients, lambda _c: at, fleet, ctr0, ctr1)
    ph.down_s = listen["down"]
    if ph.complete and fleet.first_close:
        ph.outage_s = max(c.t_sub for c in clients) - fleet.first_close
    ph.server_cpu_s = s1["cpu"] - s0["cpu"]
    window = max(1e-6, t1 - listen["seen"])
    ph.loadgen_cpu_pct = 100 * (cpu1 - listen["cpu"]) / window
    ph.other_pct = 100 * other_s / (t1 - t0)
    ph.other_top = ", ".join(other.top)
    return ph


def run_one(kind: Kind, cfg: Config) -> tuple[Phase, Phase]:
    server = ServerProc(kind)
    fleet: Fleet | None = None
    try:
        log(f"{kind.name}: server pid {server.pid} on 127.0.0.1:{server.port}")
        fleet = Fleet(server.port, kind.subprotocol)
        a, clients = cold(server, fleet, cfg)
        log(fmt_phase(a))
        fleet.run(lambda: False, time.monotonic() + cfg.settle)
        b = restart(server, fleet, clients, cfg)
        log(fmt_phase(b))
        return a, b
    finally:
        server.stop()  # first: the server's side then holds the TIME_WAITs, not our ports
        if fleet is not None:
            fleet.close_all()


def fmt_phase(p: Phase) -> str:
    c = p.counters
    return (
        f"  {p.server:26} {p.phase:7} N={p.n}  101 {p.all_101_s:6.3f} s  subscribed "
        f"{p.all_sub_s:6.3f} s  per client p50 {p.p50_ms:7.1f} p99 {p.p99_ms:7.1f} max "
        f"{p.max_ms:7.1f} ms  overflows {c['TcpExt.ListenOverflows']} drops "
        f"{c['TcpExt.ListenDrops']} synretrans {c['TcpExt.TCPSynRetrans']}  srv "
        f"{p.server_cpu_s:.2f} s  lg {p.loadgen_cpu_pct:3.0f}%  other {p.other_pct:3.0f}%  "
        f"{p.verdict}" + (f"  errors {p.errors}" if p.errors else "")
    )


def median_run(runs: list[Phase]) -> Phase:
    """The run with the median time to all subscribed (incomplete runs sort last), among the
    valid and undisturbed runs if there are any."""
    clean = [p for p in runs if p.valid and not p.disturbed] or runs
    ordered = sorted(clean, key=lambda p: (not p.complete, p.all_sub_s))
    return ordered[(len(ordered) - 1) // 2]


def s3(x: float) -> str:
    return f"{x:.3f}" if x == x else "—"


def ms1(x: float) -> str:
    return f"{x:.1f}" if x == x else "—"


def lat(samples: list[float]) -> str:
    if not samples:
        return "— (no samples)"
    return (
        f"{percentile(samples, 0.5) * 1000:.1f} / {percentile(samples, 0.99) * 1000:.1f} / "
        f"{samples[-1] * 1000:.1f} ({len(samples)})"
    )


def fratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"


def render(results: dict[str, dict[str, list[Phase]]], cfg: Config, quick: bool) -> str:
    lines = [
        "## Reconnect storm results" + (" (--quick)" if quick else ""),
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, Python "
        f"{platform.python_version()}. Server pinned to CPU {SERVER_CPU}, load generator to CPU "
        f"{LOADGEN_CPU}. N = {cfg.n} clients, {cfg.repeats} run(s) per server (the control: one) "
        "on a fresh server process each, interleaved; the table shows the median run (of the "
        "valid, undisturbed ones). Run at "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Tether runs with its default config except the per-address admission limits, "
        f"lifted as in `fanout.py` ({', '.join(f'`{k}={v:g}`' for k, v in LIFTED_LIMITS.items())}"
        "): every client here comes from the load generator's one address and would otherwise "
        "be refused past 256 connections and 20 handshakes/s, as a deployment behind a proxy "
        "must raise them too (or name the proxy in `trusted_proxies`). Its accept queue is "
        f"`listen_backlog` 4096 (capped by `net.core.somaxconn` = {sysctl('net.core.somaxconn')}"
        f"). `websockets`: backlog {WS_BACKLOG} as fanout's ws-server, and the control row with "
        f"its default {WS_DEFAULT_BACKLOG}. Kernel: `tcp_max_syn_backlog` = "
        f"{sysctl('net.ipv4.tcp_max_syn_backlog')}, `tcp_syncookies` = "
        f"{sysctl('net.ipv4.tcp_syncookies')}.",
        "",
        "| server | phase | all 101 (s) | all subscribed (s) [every run] | per client p50 / p99 "
        "/ max (ms) | failed | ListenOverflows | ListenDrops | TCPSynRetrans | server down (s) "
        "| server CPU (s) | load gen CPU | other load | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, phases in results.items():
        for name in ("cold", "restart"):
            runs = phases[name]
            if not runs:
                continue
            p = median_run(runs)
            c = p.counters
            every = ", ".join(s3(r.all_sub_s) for r in runs)
            lines.append(
                f"| {kind} | {name} | {s3(p.all_101_s)} | {s3(p.all_sub_s)} [{every}] | "
                f"{ms1(p.p50_ms)} / {ms1(p.p99_ms)} / {ms1(p.max_ms)} | {p.failed} | "
                f"{c['TcpExt.ListenOverflows']} | {c['TcpExt.ListenDrops']} | "
                f"{c['TcpExt.TCPSynRetrans']} | {s3(p.down_s)} | {p.server_cpu_s:.2f} | "
                f"{p.loadgen_cpu_pct:.0f}% | {p.other_pct:.0f}% | {p.verdict} |"
            )
    base = results.get(WEBSOCKETS.name)
    mine = results.get(TETHER.name)
    if base and mine:
        lines += [
            "",
            "#### Ratios, tether / websockets (median runs)",
            "",
            "| phase | figure | tether | websockets | ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for name in ("cold", "restart"):
            if not (mine[name] and base[name]):
                continue
            t, w = median_run(mine[name]), median_run(base[name])
            doubt = "" if (t.valid and w.valid) else " (an INVALID phase)"
            for label, tv, wv, fmt in (
                ("all 101 (s)", t.all_101_s, w.all_101_s, s3),
                ("all subscribed (s)", t.all_sub_s, w.all_sub_s, s3),
                ("per-client p50 (ms)", t.p50_ms, w.p50_ms, ms1),
                ("per-client p99 (ms)", t.p99_ms, w.p99_ms, ms1),
                ("per-client max (ms)", t.max_ms, w.max_ms, ms1),
                ("server CPU (s)", t.server_cpu_s, w.server_cpu_s, s3),
            ):
                lines.append(
                    f"| {name} | {label} | {fmt(tv)} | {fmt(wv)} | {fratio(tv, wv)}{doubt} |"
                )
    lines += [
        "",
        f"#### A bystander during the cold storm (scheduled publish -> receive, "
        f"{BYSTANDER_RATE:,.0f} msgs/s on its own topic; p50 / p99 / max ms (samples), "
        "median run)",
        "",
        "| server | alone, before the storm | during the storm |",
        "|---|---|---|",
    ]
    for kind, phases in results.items():
        if phases["cold"]:
            p = median_run(phases["cold"])
            lines.append(f"| {kind} | {lat(p.bystander_idle)} | {lat(p.bystander_storm)} |")
    lines += ["", "#### Restart details (median run)", ""]
    for kind, phases in results.items():
        if phases["restart"]:
            p = median_run(phases["restart"])
            codes = ", ".join(f"{k} x{v}" for k, v in sorted(p.close_codes.items())) or "none"
            extra = ", ".join(f"{k.split('.')[1]} {v}" for k, v in p.counters.items())
            lines.append(
                f"- {kind}: close codes {codes}; {p.refused} reconnects refused while down; "
                f"outage as the clients saw it (first close -> all re-subscribed) "
                f"{s3(p.outage_s)} s; counters: {extra}."
                + (f" Errors: {p.errors}." if p.errors else "")
            )
    for kind, phases in results.items():
        if phases["cold"]:
            p = median_run(phases["cold"])
            extra = ", ".join(f"{k.split('.')[1]} {v}" for k, v in p.counters.items())
            lines.append(
                f"- {kind}, cold: the {cfg.n} connects took {s3(p.issue_s)} s to issue; "
                f"counters: {extra}." + (f" Errors: {p.errors}." if p.errors else "")
            )
    lines += [
        "",
        "*all 101* / *all subscribed*: cold, from the first connect issued; restart, from the "
        "new server listening (its `time.monotonic()`, the clock the load generator reads), "
        "which is also each client's origin for the per-client figures of the restart (a cold "
        "client's is its own connect). *server down*: restart command -> new listener (the "
        "old server's graceful stop plus the new one's start). Reconnects refused while down "
        "wait for the listener, then all connect at once: the worst case for the accept queue. "
        "The TCP counters are the whole machine's (this run was alone on it unless *other "
        "load*, every other process's CPU plus steal in % of one core, says otherwise; above "
        f"{OTHER_MAX:.0f}% a phase is DISTURBED); a ListenOverflow is a SYN or handshake ACK "
        "dropped because the accept queue was full, each costing a client a 1 s retransmit "
        "(TCPSynRetrans). In the details, TCPAbortOnClose counts sockets closed with unread "
        "data (the kernel then resets the connection: EstabResets), e.g. a server that closes "
        "TCP right after its close frame, before the client's close reply is read; "
        "TCPLossProbes are tail-loss-probe retransmissions (RetransSegs). "
        f"*load gen CPU* is over the measured window; above {LOADGEN_VALID_MAX * 100:.0f}% "
        "the phase is INVALID (the client side may be what limits it). The bystander's latency "
        "includes the load generator's own delay in reading it; each message carries the time it "
        "was due, so a server loop stalled by the storm shows as latency.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=500, one run (< 30 s)")
    parser.add_argument("--n", type=int, default=0, help="clients (default 2000; --quick 500)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per server (default 3/1)")
    parser.add_argument(
        "--no-control",
        action="store_true",
        help=f"skip websockets with backlog {WS_DEFAULT_BACKLOG}",
    )
    parser.add_argument(
        "--markdown",
        default=str(Path(__file__).with_name("storm-results.md")),
        help="where to write the markdown report (default: benchmarks/storm-results.md)",
    )
    parser.add_argument("--role", choices=["tether-server", "ws-server"], help=argparse.SUPPRESS)
    parser.add_argument("--backlog", type=int, default=WS_BACKLOG, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile()
    if args.role is not None:
        pin(SERVER_CPU)
        asyncio.run(server_main(args.role, args.backlog))
        return
    pin(LOADGEN_CPU)
    cfg = QUICK if args.quick else FULL
    cfg = dataclasses.replace(cfg, n=args.n or cfg.n, repeats=max(1, args.repeats or cfg.repeats))
    kinds = [TETHER, WEBSOCKETS] + ([] if args.no_control else [CONTROL])
    busy0, steal0 = machine_cpu()
    time.sleep(1.0)
    busy1, steal1 = machine_cpu()
    if busy1 - busy0 + steal1 - steal0 > OTHER_MAX / 100:
        log(f"warning: the machine is already {100 * (busy1 - busy0 + steal1 - steal0):.0f}% busy")
    started = time.monotonic()
    results: dict[str, dict[str, list[Phase]]] = {
        k.name: {"cold": [], "restart": []} for k in kinds
    }
    for rep in range(cfg.repeats):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            if kind is CONTROL and rep > 0:
                continue  # one run is enough to show the loss (and each may take 30 s)
            a, b = run_one(kind, cfg)
            results[kind.name]["cold"].append(a)
            results[kind.name]["restart"].append(b)
            time.sleep(cfg.settle)
    log(f"done in {time.monotonic() - started:.0f} s")
    report = render(results, cfg, args.quick)
    print(report)
    Path(args.markdown).write_text(report)
    log(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
