"""Fan-out benchmark: one topic, many WebSocket subscribers, Tether vs a plain `websockets` server.

Run ``python benchmarks/fanout.py`` (``make bench``; about 11 minutes) or ``--quick`` (about a
minute, a smoke test that includes a reduced Redis section).
The method and the latest results are in ``docs/benchmarks.md``.

Three processes take part:

* the **server** under test (``--role tether-server`` or ``--role ws-server``, a subprocess of
  this script) pinned to CPU 0. It also runs the **publisher**: a task that publishes ~100-byte
  JSON payloads carrying ``time.time()`` at a given rate, directly in the server's event loop
  (``hub.publish_nowait`` for Tether, ``websockets.broadcast`` for the baseline), so both
  servers pay for their whole publish path and nothing else. It is driven over stdin/stdout
  (``rate R``, ``stats``, ``gc``, ``quit``) and reports its CPU time (``time.process_time()``:
  the kernel's CPU accounting for the process, in ns), its publish count and how late it ran.
* the **load generator**, this process, pinned to CPU 1: N raw TCP sockets doing the WebSocket
  client handshake by hand, one epoll loop, and a frame scanner that only reads frame headers
  (it looks at the payload of one frame in ten to extract the publish timestamp). It is also
  the orchestrator.

For each publish rate (a *step*) it warms up, measures, stops the publisher, then waits for the
stragglers so that reach (received / (published x N)) is exact.

The repeated A/B phases (CPU per delivery and latency at fixed rates, five interleaved runs,
medians) add a third server as the reference: ``--role floor-server``, a bare asyncio protocol
that frames each message once and writes it to every subscriber, the least any asyncio server
can spend per delivery; it shows how much of each figure is the kernel's and asyncio's.

**Scale-out on Redis** (the last section; ``--only-redis`` runs it alone): a private
``redis-server`` (no persistence, on a free port, pinned to CPU 0 with the hub nodes) and three
configurations stepped in turn at each rate, with the same step machinery: ``tether (memory)``,
``tether + redis, 1 node`` and ``tether + redis, 2 nodes`` (``--role tether-redis-server``; only
node 1 runs the publisher, which awaits ``hub.publish`` with up to ``REDIS_MAX_INFLIGHT`` publishes
in flight; the load generator connects half the clients to each node). Server CPU is the sum over
the nodes and Redis (Redis's is read from ``/proc/<pid>``); each configuration has its own Redis
key prefix, so an idle one hears nothing of another's publishes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

TOPIC = "bench"
PAD = "x" * 54  # makes the payload {"t0":...,"seq":...,"pad":"..."} ~100 bytes
SERVER_CPU = 0
LOADGEN_CPU = 1
SAMPLE_EVERY = 10  # extract the publish timestamp from one message frame in ten
LOADGEN_VALID_MAX = 0.85  # a step whose load generator used more of its core is invalid
P99_LIMIT = 0.250
REACH_MIN = 0.999
RATE_KEPT_MIN = 0.97  # the publisher achieved >= 97% of the step's rate
# CPU used by anything but the server and the load generator (other processes, interrupts,
# hypervisor steal), in % of one core; above this a step is DISTURBED and run again.
OTHER_MAX = 10.0
RETRIES = 2  # re-runs of one disturbed step
RETRY_BUDGET = [12]  # re-runs left for the whole run (keeps it bounded on a busy machine)

# --- scale-out on Redis ---
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Publishes of one Redis node in flight at once: the publisher does not wait for each round
# trip before the next (Redis then runs them in the order they arrive; each node still sees
# strictly +1 offsets). Below the hub's Redis pool (64 connections).
REDIS_MAX_INFLIGHT = 32
CPU_TARGET = 1.2  # one node on Redis: server + Redis µs/delivery <= 1.2x the in-memory node's
P99_TARGET = 2.0  # p99 publish->receive on Redis < 2x the in-memory node's ...
P99_TARGET_RATE = 100  # ... at this publish rate
MEMORY_ROW = "tether (memory)"
ONE_NODE_ROW = "tether + redis, 1 node"

MSG_PREFIX = b'{"type":"message"'
SUBSCRIBED_PREFIX = b'{"type":"subscribed"'
T0_KEY = b'"t0":'


# --- shared helpers -------------------------------------------------------------------------


def pin(cpu: int) -> None:
    """Pin this process to one CPU (no-op where unsupported or the CPU does not exist)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def machine_cpu() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class OtherLoad:
    """CPU used by every process but ``exclude``, plus the machine's steal, since creation.

    Read per process (``utime + stime`` of ``/proc/<pid>/stat``) rather than as the machine's
    busy time minus ours: the kernel's loopback TCP work for our own traffic (softirq, in no
    process's time) and tick sampling of processes that wake thousands of times a second would
    otherwise pass for other load. Each process counts from its first snapshot (a process that
    exits in between is missed; a new one counts whole).
    """

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.top: list[str] = []
        self.ticks, self.steal = self._snapshot()

    def _snapshot(self) -> tuple[dict[int, int], float]:
        ticks: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self.exclude:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                ticks[int(name)] = int(fields[11]) + int(fields[12])
        return ticks, machine_cpu()[1]

    def seconds(self) -> float:
        """Seconds since creation; :attr:`top` names the biggest users (for the report)."""
        ticks, steal = self._snapshot()
        before = self.ticks
        tick = os.sysconf("SC_CLK_TCK")
        used = {pid: t - before.get(pid, 0) for pid, t in ticks.items() if t > before.get(pid, 0)}
        self.top = []
        for pid in sorted(used, key=used.__getitem__, reverse=True)[:2]:
            name = "?"
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            self.top.append(f"{name} {used[pid] / tick:.2f} s")
        return sum(used.values()) / tick + steal - self.steal


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


SCHEDSTAT_SOURCE = "run time of each thread, /proc/<pid>/task/*/schedstat (ns)"
STAT_SOURCE = "utime + stime, /proc/<pid>/stat (clock ticks)"


def proc_cpu(pid: int) -> tuple[float, str]:
    """CPU seconds another process has used so far, and where the figure comes from.

    The threads' run time in ``schedstat`` (ns, what ``time.process_time()`` reads for the
    hub nodes) when the kernel has it; else ``utime + stime`` from ``/proc/<pid>/stat``,
    in clock ticks (10 ms at 100 Hz: coarse over a few seconds of a lightly loaded Redis).
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9, SCHEDSTAT_SOURCE
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # the name, in (), may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK"), STAT_SOURCE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- server side (subprocess, CPU 0) --------------------------------------------------------


class Publisher:
    """Publishes at ``rate`` messages/s: each wake-up publishes every message due by then.

    ``room``, when given, is awaited before each publish: a publisher whose publishes run as
    tasks (Redis) waits there while too many are in flight. ``t0`` is stamped after it, when
    the message is handed to the hub: a wait shows as lateness (``max_late``, the kept rate)
    rather than as latency.
    """

    def __init__(
        self,
        publish: Callable[[dict[str, Any]], None],
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.publish = publish
        self.room = room
        self.rate = 0.0
        self.gen = 0  # bumped by every set_rate
        self.t_start = 0.0
        self.done = 0  # messages published since the rate was set
        self.published = 0  # since start
        self.seq = 0
        self.max_late = 0.0  # since the last stats
        self.max_burst = 0  # since the last stats
        self.wake = asyncio.Event()

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self.gen += 1
        self.t_start = time.monotonic()
        self.done = 0
        self.wake.set()

    async def run(self) -> None:
        while True:
            rate = self.rate
            if rate <= 0:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            due = int((now - self.t_start) * rate)
            # At most 50 ms worth per wake-up: a saturated server then falls behind (the
            # step FAILs on the publisher's kept rate) but its loop stays responsive,
            # instead of spending minutes in one catch-up burst deaf to the orchestrator.
            n = min(due - self.done, max(1, int(rate * 0.05)))
            if n > 0:
                late = now - (self.t_start + (self.done + 1) / rate)
                self.max_late = max(self.max_late, late)
                self.max_burst = max(self.max_burst, n)
                publish = self.publish
                room = self.room
                gen = self.gen
                sent = 0
                for _ in range(n):
                    if room is not None:
                        await room()
                        if self.gen != gen:
                            break  # the rate changed (``rate 0``) while waiting
                    self.seq += 1
                    publish({"t0": time.time(), "seq": self.seq, "pad": PAD})
                    self.published += 1
                    sent += 1
                if self.gen != gen:
                    continue
                self.done += sent
            delay = self.t_start + (self.done + 1) / rate - time.monotonic()
            await asyncio.sleep(max(0.0, min(delay, 0.05)))


class InFlight:
    """``hub.publish`` without awaiting each round trip before the next: every publish is a
    task, at most ``limit`` at once (the publisher awaits :meth:`room`).

    Redis runs them in the order they reach it, which may not be the order they were sent:
    offsets are still +1 on every node, and each payload's ``t0`` is its own send time.
    """

    def __init__(
        self,
        publish: Callable[[dict[str, Any]], Awaitable[object]],
        limit: int,
        errors: tuple[type[Exception], ...],
    ) -> None:
        self._publish = publish
        self.limit = limit
        self._errors = errors
        self.tasks: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()
        self.max_inflight = 0  # since the last stats
        self.errors = 0
        self.last_error = ""

    def __call__(self, data: dict[str, Any]) -> None:
        task = asyncio.create_task(self._one(data))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        self.max_inflight = max(self.max_inflight, len(self.tasks))

    async def _one(self, data: dict[str, Any]) -> None:
        try:
            await self._publish(data)
        except self._errors as exc:  # counted and reported: the step's reach shows the loss
            self.errors += 1
            self.last_error = repr(exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._freed.set()

    async def room(self) -> None:
        # Bounded: every publish ends within the hub's redis_timeout (2 s), raising or not.
        while len(self.tasks) >= self.limit:
            self._freed.clear()
            await self._freed.wait()


@dataclasses.dataclass
class ServerParts:
    port: int
    publish: Callable[[dict[str, Any]], None]
    info: Callable[[], dict[str, Any]]
    keep: object  # the server object: holding it keeps it alive
    room: Callable[[], Awaitable[None]] | None = None


# Every client comes from one address (the load generator), so the per-address admission
# limits (tested in tests/security) would refuse all but the first few: lift them, as the
# baseline has none. Everything else stays at its default.
LIFTED_LIMITS: dict[str, Any] = {
    "heartbeat_interval": 3600.0,
    "heartbeat_timeout": 3600.0,
    "handshake_rate": 1_000_000.0,
    "handshake_burst": 1_000_000,
    "max_connections_per_address": 1_000_000,
}


async def _tether_server() -> ServerParts:
    from tether.server.hub import Hub
    from tether.server.serve import HubServer

    hub = Hub(host="127.0.0.1", port=0, **LIFTED_LIMITS)
    server = HubServer(hub)
    await server.start()

    def publish(data: dict[str, Any]) -> None:
        hub.publish_nowait(TOPIC, data)

    def info() -> dict[str, Any]:
        return {
            "conns": hub.connection_count,
            "slow_consumers": hub.stats.slow_consumers,
            "deliveries": hub.stats.deliveries,
            "writes": hub.stats.delivery_writes,
        }

    return ServerParts(server.port, publish, info, server)


async def _tether_redis_server(url: str, prefix: str) -> ServerParts:
    from tether.server.broker import BrokerUnavailable, TooManyTopics
    from tether.server.hub import Hub
    from tether.server.serve import HubServer

    hub = Hub(host="127.0.0.1", port=0, redis_url=url, redis_prefix=prefix, **LIFTED_LIMITS)
    await hub.start()  # connect the broker (the server's lifespan would too; idempotent)
    deadline = time.monotonic() + 10.0
    while not hub.ready:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the hub never got ready on Redis at {url}")
        await asyncio.sleep(0.05)
    server = HubServer(hub)
    await server.start()
    inflight = InFlight(
        lambda data: hub.publish(TOPIC, data),
        REDIS_MAX_INFLIGHT,
        (BrokerUnavailable, TooManyTopics, ValueError, TypeError),  # what hub.publish raises
    )

    def info() -> dict[str, Any]:
        stats = {
            "conns": hub.connection_count,
            "slow_consumers": hub.stats.slow_consumers,
            "inflight_max": inflight.max_inflight,
            "publish_errors": inflight.errors,
            "last_error": inflight.last_error,
        }
        inflight.max_inflight = len(inflight.tasks)
        return stats

    return ServerParts(server.port, inflight, info, (server, inflight), inflight.room)


async def _ws_server() -> ServerParts:
    import msgspec
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    encoder = msgspec.json.Encoder()
    connections: set[ServerConnection] = set()
    epoch = os.urandom(6).hex()
    state = {"offset": 0}

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "subscribe":
                    connections.add(ws)
                    reply = {"type": "subscribed", "topic": frame["topic"], "epoch": epoch}
                    await ws.send(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass  # the load generator just drops its sockets
        finally:
            connections.discard(ws)

    server = await serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, backlog=2048
    )

    def publish(data: dict[str, Any]) -> None:
        # The same frame shape as Tether's `message`, encoded once, sent as a text frame.
        state["offset"] += 1
        frame = message_json(encoder, epoch, state["offset"], data)
        broadcast(connections, frame, text=True)

    def info() -> dict[str, Any]:
        return {"conns": len(connections), "slow_consumers": 0}

    port: int = server.sockets[0].getsockname()[1]
    return ServerParts(port, publish, info, server)


async def _floor_server() -> ServerParts:
    """The least any asyncio server can spend per delivery: the reference, not a contender.

    A bare ``asyncio.Protocol`` that answers the handshake, takes the first frame after it
    for the subscribe, and publishes by encoding the same ``message`` frame once, framing it
    once and calling ``transport.write`` for each subscriber: no parsing of client frames,
    no limits, no history, no bookkeeping. What Tether spends above this is its own Python;
    what the floor spends is the kernel's ``send()`` and asyncio's write.
    """
    import msgspec

    encoder = msgspec.json.Encoder()
    transports: list[asyncio.Transport] = []
    epoch = os.urandom(6).hex()
    state = {"offset": 0}
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"  # RFC 6455's accept-key constant

    class Floor(asyncio.Protocol):
        def __init__(self) -> None:
            self.head = b""
            self.upgraded = False
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            if self.upgraded:  # the load generator's only frame: its subscribe
                transports.append(self.transport)
                self.transport.write(
                    ws_frame(
                        json.dumps(
                            {"type": "subscribed", "topic": TOPIC, "epoch": epoch},
                            separators=(",", ":"),
                        ).encode()
                    )
                )
                return
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            key = next(
                line.split(b":", 1)[1].strip()
                for line in self.head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + guid).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True

        def connection_lost(self, exc: Exception | None) -> None:
            if self.transport in transports:
                transports.remove(self.transport)

    server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", 0, backlog=2048)

    def publish(data: dict[str, Any]) -> None:
        state["offset"] += 1
        wire = ws_frame(message_json(encoder, epoch, state["offset"], data))
        for transport in transports:
            transport.write(wire)

    def info() -> dict[str, Any]:
        return {"conns": len(transports), "slow_consumers": 0}

    port: int = server.sockets[0].getsockname()[1]
    return ServerParts(port, publish, info, server)


def message_json(encoder: Any, epoch: str, offset: int, data: dict[str, Any]) -> bytes:
    """A ``message`` frame of :data:`TOPIC` as Tether's hub encodes it, for the baselines."""
    message = {
        "type": "message",
        "topic": TOPIC,
        "epoch": epoch,
        "offset": offset,
        "ts": int(time.time() * 1000),
        "data": data,
    }
    encoded: bytes = encoder.encode(message)
    return encoded


def ws_frame(payload: bytes) -> bytes:
    """An unmasked (server-to-client) WebSocket text frame, framed by ``websockets``."""
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class GcClock:
    """Times the server's garbage collections (``gc.callbacks``): since start, per generation,
    and the longest pause since the last ``stats``. A collection stops the loop, so it is
    latency every server pays in its own proportion."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self.max = 0.0  # since the last stats
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.count[info["generation"]] += 1
        self.seconds += took
        self.max = max(self.max, took)


def _reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def server_main(
    kind: str, *, redis_url: str = "", redis_prefix: str = "", publishing: bool = True
) -> None:
    """Serve, and publish when told a rate (``publishing``: else ``rate`` is acknowledged and
    ignored, as on node 2 of the two-node Redis case)."""
    if kind == "tether-redis":
        parts = await _tether_redis_server(redis_url, redis_prefix)
    else:
        parts = await {"tether": _tether_server, "websockets": _ws_server, FLOOR: _floor_server}[
            kind
        ]()
    info = parts.info
    publisher = Publisher(parts.publish, parts.room)
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    pub_task = asyncio.create_task(publisher.run()) if publishing else None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"ready": True, "port": parts.port, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd, *args = line.decode().split()
        if cmd == "rate":
            publisher.set_rate(float(args[0]))
            _reply({"ok": True})
        elif cmd == "stats":
            _reply(
                {
                    "published": publisher.published,
                    "cpu": time.process_time(),
                    "mono": time.monotonic(),
                    "max_late": publisher.max_late,
                    "max_burst": publisher.max_burst,
                    "gc_count": gc_clock.count,
                    "gc_seconds": gc_clock.seconds,
                    "gc_max": gc_clock.max,
                    **info(),
                }
            )
            publisher.max_late = 0.0
            publisher.max_burst = 0
            gc_clock.max = 0.0
        elif cmd == "gc":
            gc.collect()
            _reply({"ok": True})
        elif cmd == "quit":
            _reply({"bye": True})
            break
    if pub_task is not None:
        pub_task.cancel()
    sys.stdout.flush()
    os._exit(0)  # the process is disposable: skip graceful close of thousands of sockets


class ServerProc:
    """A server subprocess pinned to CPU 0, driven line by line over its stdin/stdout."""

    def __init__(
        self, kind: str, argv: Sequence[str] | None = None, *, script: str = __file__
    ) -> None:
        """``kind`` names it in the report; ``argv`` (the ``--role ...`` arguments of
        ``script``, this file by default) defaults to the role of ``kind``: ``tether`` or
        ``websockets``."""
        self.kind = kind
        if argv is None:
            argv = ["--role", ROLES[kind]]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        try:
            hello = self._read(timeout=30)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        self.port: int = hello["port"]
        self.ports = [self.port]

    def _read(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.kind} server did not answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} server exited (rc={self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def cmd(self, line: str, timeout: float = 120.0) -> dict[str, Any]:
        # Generous: a saturated server (the step then FAILs) may take long to answer,
        # its loop busy with the backlog its publisher is trying to catch up on.
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
                self.cmd("quit", timeout=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class RedisServer:
    """A private ``redis-server``: a free port on 127.0.0.1, no persistence, pinned to ``cpu``."""

    def __init__(self, cpu: int, *, attempts: int = 3, timeout: float = 10.0) -> None:
        self.dir = tempfile.mkdtemp(prefix="tether-bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(attempts):  # another process may take the free port first
                self.port = free_port()
                with open(os.path.join(self.dir, "redis.log"), "ab") as out:
                    self.proc = subprocess.Popen(
                        [
                            *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"),
                            *("--save", "", "--appendonly", "no", "--dir", self.dir),
                            *("--daemonize", "no", "--logfile", ""),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                if self._answers(timeout):
                    break
                self._stop_proc()
            else:
                raise RuntimeError(f"redis-server did not start: {self.log_tail()}")
            assert self.proc is not None
            self.pid = self.proc.pid
            # Every thread (redis starts its bio threads at once), so all of it is on `cpu`.
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), {cpu})
            self.affinity = sorted(os.sched_getaffinity(self.pid))
            self.cpu_source = proc_cpu(self.pid)[1]
            version = subprocess.run(
                [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.split()
            self.version = next((v[2:] for v in version if v.startswith("v=")), "?")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _answers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.05)
        return False

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.dir, "redis.log").read_text(errors="replace")[-400:]
        return "(no log)"

    def cpu(self) -> float:
        return proc_cpu(self.pid)[0]

    def _stop_proc(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM to its pid: with --save "" it exits without writing
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        try:
            self._stop_proc()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Target(Protocol):
    """The server side of a step: what :func:`run_step` drives."""

    kind: str
    ports: list[int]  # where the load generator connects (split evenly)

    def cmd(self, line: str, timeout: float = 120.0) -> dict[str, Any]: ...


class Nodes:
    """Hub nodes on one Redis, driven as one server: node 1 runs the publisher.

    ``stats`` answers node 1's publisher figures, with ``cpu`` the CPU of every node plus
    Redis's (``nodes_cpu`` and ``redis_cpu`` apart), and the connections of each node.
    """

    def __init__(self, kind: str, procs: Sequence[ServerProc], redis: RedisServer) -> None:
        self.kind = kind
        self.procs = list(procs)
        self.redis = redis
        self.ports = [p.port for p in self.procs]

    def cmd(self, line: str, timeout: float = 120.0) -> dict[str, Any]:
        if line.startswith("rate"):
            return self.procs[0].cmd(line, timeout)
        if line != "stats":
            replies = [p.cmd(line, timeout) for p in self.procs]
            return replies[0]
        each = [p.cmd("stats", timeout) for p in self.procs]
        redis_cpu = self.redis.cpu()
        out = dict(each[0])
        out["nodes_cpu"] = sum(s["cpu"] for s in each)
        out["redis_cpu"] = redis_cpu
        out["cpu"] = out["nodes_cpu"] + redis_cpu
        out["conns_each"] = [s["conns"] for s in each]
        out["conns"] = sum(out["conns_each"])
        out["slow_consumers"] = sum(s["slow_consumers"] for s in each)
        out["publish_errors"] = sum(s.get("publish_errors", 0) for s in each)
        return out


# --- load generator (this process, CPU 1) ---------------------------------------------------


def masked_text_frame(payload: bytes) -> bytes:
    """A client->server text frame, masked as RFC 6455 requires (payload < 126 bytes)."""
    assert len(payload) < 126
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


class Conn:
    __slots__ = ("buf", "port", "sock", "subscribed")

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.port = port
        self.buf = b""
        self.subscribed = False


class LoadGen:
    """N WebSocket subscribers on raw sockets, one epoll loop, header-only frame scanning.

    With several ``ports`` (hub nodes) each new connection goes to the one with the fewest.
    """

    def __init__(self, ports: int | Sequence[int]) -> None:
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        self.per_port = dict.fromkeys(self.ports, 0)  # open connections to each port
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.frames = 0  # message frames received, all connections
        self.sampling = False
        self.samples: list[float] = []
        self.countdown = SAMPLE_EVERY
        self.lost = 0  # connections closed by the server
        self.subscribe = json.dumps({"type": "subscribe", "topic": TOPIC}).encode()

    def __len__(self) -> int:
        return len(self.conns)

    def _handshake_request(self, key: str, port: int) -> bytes:
        return (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def connect(self, n: int, *, batch: int = 100, timeout: float = 60.0) -> None:
        """Open ``n`` more connections, subscribe each, wait until all are subscribed."""
        deadline = time.monotonic() + timeout
        remaining = n
        while remaining > 0:
            pending = []
            for _ in range(min(batch, remaining)):
                port = min(self.ports, key=self.per_port.__getitem__)
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.per_port[port] += 1  # at once, so that one batch spreads evenly
                key = base64.b64encode(os.urandom(16)).decode()
                sock.sendall(self._handshake_request(key, port))
                pending.append((sock, port))
            for sock, port in pending:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise RuntimeError("server closed during the handshake")
                    head += chunk
                status, _, rest = head.partition(b"\r\n\r\n")
                if not status.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(f"handshake refused: {status[:80]!r}")
                sock.sendall(masked_text_frame(self.subscribe))
                sock.setblocking(False)
                conn = Conn(sock, port)
                self.conns[sock.fileno()] = conn
                self.ep.register(sock.fileno(), select.EPOLLIN)
                if rest:
                    self._on_data(conn, rest, time.time())
            remaining -= len(pending)
            if time.monotonic() > deadline:
                raise TimeoutError(f"connecting {n} clients took over {timeout} s")
        self.pump(max(1.0, deadline - time.monotonic()), until=self.all_subscribed)
        if not self.all_subscribed():
            missing = sum(not c.subscribed for c in self.conns.values())
            raise TimeoutError(f"{missing} connections never got `subscribed`")

    def all_subscribed(self) -> bool:
        return all(c.subscribed for c in self.conns.values())

    def close(self, n: int | None = None) -> None:
        """Close ``n`` connections (all by default)."""
        for fd in list(self.conns)[: len(self.conns) if n is None else n]:
            self._drop(self.conns[fd], lost=False)

    def _drop(self, conn: Conn, *, lost: bool) -> None:
        fd = conn.sock.fileno()
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        if self.conns.pop(fd, None) is not None:
            self.per_port[conn.port] -= 1
        conn.sock.close()
        if lost:
            self.lost += 1

    def _on_data(self, conn: Conn, data: bytes, now: float) -> None:
        if conn.buf:
            data = conn.buf + data
            conn.buf = b""
        n = len(data)
        pos = 0
        got = 0
        sampling = self.sampling
        countdown = self.countdown
        while pos + 2 <= n:
            length = data[pos + 1]  # server frames are unmasked: no mask bit
            if length < 126:
                start = pos + 2
            elif length == 126:
                if pos + 4 > n:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if pos + 10 > n:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode == 1:
                if data.startswith(MSG_PREFIX, start):
                    got += 1
                    if sampling:
                        countdown -= 1
                        if countdown == 0:
                            countdown = SAMPLE_EVERY
                            i = data.find(T0_KEY, start, end) + len(T0_KEY)
                            j = data.find(b",", i, end)
                            self.samples.append(now - float(data[i:j]))
                elif data.startswith(SUBSCRIBED_PREFIX, start):
                    conn.subscribed = True
            elif opcode == 8:  # close
                self._drop(conn, lost=True)
                break
            pos = end
        if pos < n:
            conn.buf = data[pos:]
        self.frames += got
        self.countdown = countdown

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Receive for ``seconds`` (or until ``until()`` is true)."""
        deadline = time.monotonic() + seconds
        poll = self.ep.poll
        conns = self.conns
        on_data = self._on_data
        clock = time.time
        while True:
            now = time.monotonic()
            if now >= deadline or (until is not None and until()):
                return
            for fd, _ in poll(min(0.05, deadline - now)):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(conn, lost=True)
                    continue
                on_data(conn, data, clock())

    def drain(self, target: int, *, idle: float = 1.0, limit: float = 5.0) -> bool:
        """Receive until ``self.frames >= target``, nothing arrived for ``idle`` s, or ``limit``."""
        deadline = time.monotonic() + limit
        while self.frames < target and time.monotonic() < deadline:
            before = self.frames
            self.pump(min(idle, deadline - time.monotonic()), until=lambda: self.frames >= target)
            if self.frames == before:
                break
        return self.frames >= target


# --- orchestration --------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    n: int  # subscribers in the stepped-rate and A/B phases
    rates: list[int]  # stepped publish rates (msgs/s) at N = n
    ab_rates: list[int]  # fixed rates for the repeated, interleaved CPU and latency comparison
    ab_repeats: int
    high_n: int  # subscribers in the high per-topic rate phase
    high_rates: list[int]
    # Fixed rates at N = high_n for the repeated latency comparison: sub-millisecond p99s
    # move by 2-3x between single runs, so a ratio of single runs decides nothing.
    lat_rates: list[int]
    lat_repeats: int
    rss_ns: list[int]  # idle-connection counts for the RSS measurement
    redis_n: int  # subscribers in the Redis section (split across the nodes)
    redis_rates: list[int]
    redis_runs: int  # interleaved runs of the Redis section; each cell shows the median run
    warmup: float
    measure: float


FULL = Config(
    n=1000,
    rates=[10, 25, 50, 100, 150, 200, 225, 250, 300, 400, 600, 800],
    # 100 msgs/s x 1000 is the 100k deliveries/s of the CPU target; 25 the cold-cache case;
    # 10 and 50 with them, every rate at which the baseline keeps up, so the latency target
    # ("p99 <= websockets' at every valid step") is judged on repeated runs, not on the one
    # stepped run (whose p99 at 10 msgs/s moved 14-22 ms from run to run, for both).
    # Five runs: one 3 s measurement varies by +-10-15%, and the median of five by much less.
    ab_rates=[10, 25, 50, 100],
    ab_repeats=5,
    high_n=50,
    high_rates=[1000, 2000, 4000, 5000, 6000, 8000],
    lat_rates=[1000, 2000],  # the steps where neither the baseline nor the load gen saturate
    # Nine: at N = 50 p99 is about a millisecond, and one 3 s run's p99 moves 0.5-14 ms for
    # every server alike (the host): the median of five still swung 0.8x-1.75x between runs.
    lat_repeats=9,
    rss_ns=[1000, 5000],
    redis_n=1000,
    redis_rates=[10, 50, 100],
    redis_runs=3,
    warmup=1.0,
    measure=3.0,
)
QUICK = Config(
    n=200,
    rates=[25, 100, 250],
    ab_rates=[100],
    ab_repeats=1,
    high_n=20,
    high_rates=[2000],
    lat_rates=[2000],
    lat_repeats=1,
    rss_ns=[200, 1000],
    redis_n=200,
    redis_rates=[100],
    redis_runs=1,
    warmup=0.5,
    measure=1.5,
)
KINDS = ("tether", "websockets")
#: The reference of the repeated A/B phases: what a bare asyncio server spends (_floor_server).
FLOOR = "asyncio floor"
AB_KINDS = (*KINDS, FLOOR)
ROLES = {"tether": "tether-server", "websockets": "ws-server", FLOOR: "floor-server"}


@dataclasses.dataclass
class Step:
    server: str
    n: int
    rate: int
    deliveries_per_s: float = 0.0
    reach: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")  # p99.9: with 1 frame in 10 sampled, >= 1,000 samples/step
    max_ms: float = float("nan")  # the largest latency sample
    server_cpu_us: float = float("nan")  # per delivery (nodes + Redis, with Redis)
    redis_cpu_us: float = float("nan")  # Redis CPU per publish
    publish_errors: int = 0
    inflight_max: int = 0  # the Redis publisher's most publishes in flight at once
    conns_each: list[int] = dataclasses.field(default_factory=list)  # per node, with Redis
    server_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    pub_rate: float = 0.0
    max_late_ms: float = 0.0
    max_burst: int = 0
    #: The server's garbage collections in the window: per generation, total and longest ms
    #: (node 1's, with several Redis nodes: its ``stats`` answer the publisher's figures).
    gc_count: tuple[int, int, int] = (0, 0, 0)
    gc_ms: float = 0.0
    gc_max_ms: float = 0.0
    #: Server CPU per delivery over every run of a repeated cell (min, max), when repeated.
    cpu_range: tuple[float, float] | None = None
    #: Message frames per batched write to a subscriber (Tether only: the hub counts them).
    frames_per_write: float = float("nan")
    lost: int = 0
    other_pct: float = 0.0  # CPU used by the rest of the machine during the window
    steal_pct: float = 0.0

    @property
    def disturbed(self) -> bool:
        return self.other_pct + self.steal_pct > OTHER_MAX

    @property
    def valid(self) -> bool:
        return self.loadgen_cpu_pct <= LOADGEN_VALID_MAX * 100

    @property
    def kept_rate(self) -> bool:
        return self.pub_rate >= RATE_KEPT_MIN * self.rate

    @property
    def sustained(self) -> bool:
        return self.kept_rate and self.p99_ms < P99_LIMIT * 1000 and self.reach >= REACH_MIN

    @property
    def verdict(self) -> str:
        if not self.sustained:
            reasons = []
            if not self.kept_rate:
                reasons.append("publisher behind")
            if not self.p99_ms < P99_LIMIT * 1000:
                reasons.append("p99")
            if self.reach < REACH_MIN:
                reasons.append("reach")
            verdict = "FAIL (" + ", ".join(reasons) + ")"
        else:
            verdict = "ok"
        if not self.valid:
            verdict += " INVALID (load gen > 85%)"
        if self.disturbed:
            verdict += f" DISTURBED (other load {self.other_pct + self.steal_pct:.0f}%)"
        return verdict


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def run_step(server: Target, lg: LoadGen, n: int, rate: int, cfg: Config) -> Step:
    if len(lg) < n:  # replace connections the server cut off in an earlier step
        lg.connect(n - len(lg))
    lost_before = lg.lost
    step = Step(server=server.kind, n=n, rate=rate)
    first = server.cmd("stats")
    frames_first = lg.frames
    server.cmd(f"rate {rate}")
    lg.pump(cfg.warmup)
    s0 = server.cmd("stats")
    f0 = lg.frames
    busy0, steal0 = machine_cpu()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    lg.samples = []
    lg.sampling = True
    lg.pump(cfg.measure)
    lg.sampling = False
    t1 = time.monotonic()
    cpu1 = time.process_time()
    busy1, steal1 = machine_cpu()
    f1 = lg.frames
    s1 = server.cmd("stats")
    server.cmd("rate 0")
    last = server.cmd("stats")
    expected = (last["published"] - first["published"]) * n
    lg.drain(frames_first + expected)

    published = s1["published"] - s0["published"]
    step.deliveries_per_s = (f1 - f0) / (t1 - t0)
    step.reach = (lg.frames - frames_first) / expected if expected else 0.0
    samples = sorted(lg.samples)
    step.p50_ms = percentile(samples, 0.50) * 1000
    step.p99_ms = percentile(samples, 0.99) * 1000
    step.p999_ms = percentile(samples, 0.999) * 1000
    step.max_ms = samples[-1] * 1000 if samples else float("nan")
    server_cpu = s1["cpu"] - s0["cpu"]
    span = s1["mono"] - s0["mono"]
    step.server_cpu_us = server_cpu / (published * n) * 1e6 if published else float("nan")
    step.server_cpu_pct = 100 * server_cpu / span
    step.loadgen_cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    step.pub_rate = published / span
    step.max_late_ms = s1["max_late"] * 1000
    step.max_burst = s1["max_burst"]
    c0, c1 = s0["gc_count"], s1["gc_count"]
    step.gc_count = (c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2])
    step.gc_ms = (s1["gc_seconds"] - s0["gc_seconds"]) * 1000
    step.gc_max_ms = s1["gc_max"] * 1000
    if "writes" in s1 and s1["writes"] > s0["writes"]:
        step.frames_per_write = (s1["deliveries"] - s0["deliveries"]) / (
            s1["writes"] - s0["writes"]
        )
    step.lost = lg.lost - lost_before
    if "redis_cpu" in s1 and published:
        step.redis_cpu_us = (s1["redis_cpu"] - s0["redis_cpu"]) / published * 1e6
    step.publish_errors = last.get("publish_errors", 0) - first.get("publish_errors", 0)
    step.inflight_max = s1.get("inflight_max", 0)
    if step.publish_errors:
        log(f"  {step.publish_errors} publish(es) failed, the last: {last.get('last_error')}")
    step.conns_each = list(s1.get("conns_each", []))
    ours = server_cpu / span + (cpu1 - cpu0) / (t1 - t0)
    step.other_pct = max(0.0, 100 * ((busy1 - busy0) / (t1 - t0) - ours))
    step.steal_pct = 100 * (steal1 - steal0) / (t1 - t0)
    return step


def run_step_checked(server: Target, lg: LoadGen, n: int, rate: int, cfg: Config) -> Step:
    """:func:`run_step`, run again (up to RETRIES times) while other load disturbs it."""
    step = run_step(server, lg, n, rate, cfg)
    for _ in range(RETRIES):
        if not step.disturbed or RETRY_BUDGET[0] <= 0:
            break
        RETRY_BUDGET[0] -= 1
        log(fmt_step(step) + "  -> run again")
        step = run_step(server, lg, n, rate, cfg)
    return step


def idle_rss_per_conn(server: ServerProc, lg: LoadGen, n: int) -> dict[str, float]:
    """RSS growth of the server from 0 to ``n`` idle subscribed connections, per connection."""
    lg.connect(1)  # warm-up connection: lazy imports and first-use allocations
    lg.pump(0.3)
    lg.close()
    lg.pump(0.3)
    server.cmd("gc")
    before = rss_kib(server.pid)
    lg.connect(n)
    lg.pump(1.0)
    server.cmd("gc")
    after = rss_kib(server.pid)
    return {"n": n, "before_kib": before, "after_kib": after, "per_conn_kib": (after - before) / n}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_step(s: Step) -> str:
    return (
        f"  {s.server:10} N={s.n:<5} {s.rate:>5}/s  {s.deliveries_per_s:>9,.0f} deliv/s  "
        f"reach {100 * s.reach:7.3f}%  p50 {s.p50_ms:7.1f} ms  p99 {s.p99_ms:7.1f} ms  "
        f"p99.9 {s.p999_ms:7.1f} ms  max {s.max_ms:7.1f} ms  "
        f"srv {s.server_cpu_us:5.2f} us/deliv ({s.server_cpu_pct:3.0f}%)  "
        f"lg {s.loadgen_cpu_pct:3.0f}%  other {s.other_pct + s.steal_pct:3.0f}%  "
        f"pub {s.pub_rate:7.1f}/s  gc {'/'.join(map(str, s.gc_count))} "
        f"{s.gc_ms:.1f} ms (max {s.gc_max_ms:.1f})  {s.verdict}"
        + (
            f"  [redis {s.redis_cpu_us:.0f} us/publish, max {s.max_ms:.1f} ms, "
            f"conns {'+'.join(map(str, s.conns_each))}, in flight <= {s.inflight_max}, "
            f"errors {s.publish_errors}]"
            if s.conns_each
            else ""
        )
    )


@dataclasses.dataclass
class RedisSection:
    n: int
    rates: list[int]
    rows: dict[str, list[Step]]  # configuration -> its steps, memory first
    redis_version: str
    redis_affinity: list[int]
    cpu_source: str
    redis_idle_pct: float  # Redis CPU with every configuration connected and idle
    runs: int = 1  # interleaved runs; each cell is the median run by CPU per delivery


@dataclasses.dataclass
class Results:
    rss: dict[str, list[dict[str, float]]] = dataclasses.field(default_factory=dict)
    ab: dict[str, dict[int, list[Step]]] = dataclasses.field(default_factory=dict)
    steps: dict[str, list[Step]] = dataclasses.field(default_factory=dict)
    high: dict[str, list[Step]] = dataclasses.field(default_factory=dict)
    lat: dict[str, dict[int, list[Step]]] = dataclasses.field(default_factory=dict)
    redis: RedisSection | None = None
    redis_error: str = ""  # why the Redis section could not run


def stepped(
    servers: Mapping[str, Target],
    lgs: Mapping[str, LoadGen],
    n: int,
    rates: list[int],
    cfg: Config,
    *,
    stop_at_failure: bool = True,
) -> dict[str, list[Step]]:
    """Step the rate up, every server at each rate in turn, each until its first failed step
    (or through every rate, without ``stop_at_failure``)."""
    out: dict[str, list[Step]] = {kind: [] for kind in servers}
    active = list(servers)
    for i, rate in enumerate(rates):
        order = active if i % 2 == 0 else active[::-1]
        for kind in order:
            step = run_step_checked(servers[kind], lgs[kind], n, rate, cfg)
            out[kind].append(step)
            log(fmt_step(step))
            if not step.sustained:
                # Past saturation its backlog must not disturb the other servers' next steps:
                # dropping the sockets makes the server discard what it still buffers (its
                # next step, if any, connects N fresh subscribers).
                lgs[kind].close()
                if stop_at_failure:
                    active.remove(kind)
                else:
                    lgs[kind].pump(0.3)  # let the server see the closes before going on
        if not active:
            break
    return out


def interleaved(
    servers: Mapping[str, Target],
    lgs: Mapping[str, LoadGen],
    n: int,
    rates: list[int],
    repeats: int,
    cfg: Config,
) -> dict[str, dict[int, list[Step]]]:
    """``repeats`` runs of every server at every rate, the servers' order rotating from one
    run to the next (so none always runs first, on the coldest caches, or last)."""
    kinds = list(servers)
    out: dict[str, dict[int, list[Step]]] = {kind: {rate: [] for rate in rates} for kind in kinds}
    for rep in range(repeats):
        order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
        for rate in rates:
            for kind in order:
                step = run_step_checked(servers[kind], lgs[kind], n, rate, cfg)
                out[kind][rate].append(step)
                log(fmt_step(step) + f"  [A/B run {rep + 1}]")
    return out


def run_all(cfg: Config) -> Results:
    res = Results()
    servers: dict[str, ServerProc] = {}
    try:
        for kind in AB_KINDS:
            servers[kind] = ServerProc(kind)
            log(f"{kind}: server pid {servers[kind].pid} on 127.0.0.1:{servers[kind].port}")
        lgs = {kind: LoadGen(server.port) for kind, server in servers.items()}
        contenders = {kind: servers[kind] for kind in KINDS}

        # 1. Idle RSS at N (this also connects the N subscribers of phases 2 and 3).
        for kind in KINDS:
            res.rss[kind] = [idle_rss_per_conn(servers[kind], lgs[kind], cfg.n)]
            log(f"  {kind}: idle RSS {res.rss[kind][0]['per_conn_kib']:.1f} KiB/conn, N={cfg.n}")
        lgs[FLOOR].connect(cfg.n)

        # 2. CPU per delivery and latency at fixed rates: repeated, interleaved A/B runs.
        res.ab = interleaved(servers, lgs, cfg.n, cfg.ab_rates, cfg.ab_repeats, cfg)

        # 3. Stepped publish rate at N.
        res.steps = stepped(contenders, lgs, cfg.n, cfg.rates, cfg)

        # 4. High per-topic rate with fewer subscribers: several messages per loop iteration.
        # The repeated latency comparison first, at rates where every server keeps up, then
        # the stepping to saturation (after which a server that failed starts on fresh
        # connections and one that did not carries its state on: not a fair start).
        for kind in AB_KINDS:
            lgs[kind].close()
            lgs[kind].pump(0.3)
            lgs[kind].connect(cfg.high_n)
        res.lat = interleaved(servers, lgs, cfg.high_n, cfg.lat_rates, cfg.lat_repeats, cfg)
        res.high = stepped(contenders, lgs, cfg.high_n, cfg.high_rates, cfg)
        for lg in lgs.values():
            lg.close()
    finally:
        for server in servers.values():
            server.stop()

    # 5. Idle RSS at the larger N, each on a fresh server.
    for n in cfg.rss_ns:
        if n == cfg.n:
            continue
        for kind in KINDS:
            server = ServerProc(kind)
            try:
                lg = LoadGen(server.port)
                res.rss[kind].append(idle_rss_per_conn(server, lg, n))
                log(f"  {kind}: idle RSS {res.rss[kind][-1]['per_conn_kib']:.1f} KiB/conn, N={n}")
                lg.close()
            finally:
                server.stop()
    return res


def two_node_row(n: int) -> str:
    return f"tether + redis, 2 nodes ({n - n // 2} + {n // 2} clients)"


def median_steps(runs: list[list[Step]]) -> list[Step]:
    """Per rate, the run with the median CPU per delivery (its other figures with it), and
    the range of CPU per delivery over all runs: a single run's ratio can flip a verdict."""
    out = []
    for repeats in zip(*runs, strict=True):
        ranked = sorted(repeats, key=lambda step: step.server_cpu_us)
        chosen = dataclasses.replace(ranked[len(ranked) // 2])
        if len(ranked) > 1:
            chosen.cpu_range = (ranked[0].server_cpu_us, ranked[-1].server_cpu_us)
        out.append(chosen)
    return out


def run_redis(cfg: Config) -> RedisSection:
    """Scale-out on Redis: memory, one node and two nodes on one private Redis, interleaved.

    All three are up at once, each with its own N subscribers (idle while another is stepped)
    and, on Redis, its own key prefix, so one configuration's publishes reach only its own
    subscribers. Hub nodes and Redis share CPU 0; the load generator keeps CPU 1.
    """
    n = cfg.redis_n
    started: list[ServerProc] = []
    lgs: dict[str, LoadGen] = {}
    redis: RedisServer | None = None

    def server(kind: str, argv: list[str]) -> ServerProc:
        proc = ServerProc(kind, argv)
        started.append(proc)
        return proc

    def node(name: str, url: str, prefix: str, *, publisher: bool) -> ServerProc:
        argv = ["--role", "tether-redis-server", "--redis-url", url, "--redis-prefix", prefix]
        return server(name, [*argv, "--publisher" if publisher else "--no-publisher"])

    try:
        redis = RedisServer(SERVER_CPU)
        log(
            f"redis-server {redis.version}: pid {redis.pid} on 127.0.0.1:{redis.port}, "
            f"CPU {redis.affinity}"
        )
        url = redis.url
        targets: dict[str, Target] = {
            MEMORY_ROW: server(MEMORY_ROW, ["--role", "tether-server"]),
            ONE_NODE_ROW: Nodes(
                ONE_NODE_ROW, [node("1 node", url, "bench-1-node", publisher=True)], redis
            ),
            two_node_row(n): Nodes(
                two_node_row(n),
                [
                    node("2 nodes: node 1", url, "bench-2-nodes", publisher=True),
                    node("2 nodes: node 2", url, "bench-2-nodes", publisher=False),
                ],
                redis,
            ),
        }
        for kind, target in targets.items():
            lgs[kind] = LoadGen(target.ports)
            lgs[kind].connect(n)
            stats = target.cmd("stats")
            conns = stats.get("conns_each") or [stats["conns"]]
            log(f"  {kind}: {'+'.join(map(str, conns))} subscribers")
        # Redis's CPU when nothing is published (housekeeping, the nodes' 1 s probes): part
        # of every step's Redis figure, so it weighs most per publish at low rates.
        idle_span = max(1.0, cfg.measure)
        cpu0, t0 = redis.cpu(), time.monotonic()
        time.sleep(idle_span)
        redis_idle_pct = 100 * (redis.cpu() - cpu0) / (time.monotonic() - t0)
        log(f"  redis-server idle: {redis_idle_pct:.2f}% of a core")
        runs = [
            stepped(targets, lgs, n, cfg.redis_rates, cfg, stop_at_failure=False)
            for _ in range(cfg.redis_runs)
        ]
        rows = {kind: median_steps([run[kind] for run in runs]) for kind in targets}
        return RedisSection(
            n=n,
            rates=list(cfg.redis_rates),
            rows=rows,
            redis_version=redis.version,
            redis_affinity=redis.affinity,
            cpu_source=redis.cpu_source,
            redis_idle_pct=redis_idle_pct,
            runs=cfg.redis_runs,
        )
    finally:
        for lg in lgs.values():
            lg.close()
        for proc in started:
            proc.stop()
        if redis is not None:
            redis.stop()


def max_sustained(steps: list[Step]) -> tuple[Step | None, str]:
    """The last step of the unbroken run of sustained, valid steps, and what ended the run."""
    best = None
    for s in steps:
        if s.sustained and s.valid:
            best = s
            continue
        if s.sustained:
            return best, "load gen > 85% at the next step: lower bound"
        return best, f"failed at {s.rate} msgs/s"
    return best, "highest step run: lower bound"


def highest_sustained(steps: list[Step]) -> Step | None:
    """The highest step sustained, counting steps the load generator made INVALID."""
    ok = [s for s in steps if s.sustained]
    return max(ok, key=lambda s: s.deliveries_per_s) if ok else None


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def md_steps(title: str, steps: list[Step]) -> list[str]:
    out = [
        f"#### {title}",
        "",
        "| server | N | msgs/s | deliveries/s | reach | p50 ms | p99 ms | p99.9 ms | max ms "
        "| server µs/delivery | server CPU | load gen CPU | other load | publisher msgs/s "
        "| max burst | frames/write | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        out.append(
            f"| {s.server} | {s.n} | {s.rate} | {s.deliveries_per_s:,.0f} | "
            f"{100 * s.reach:.3f}% | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.p999_ms:.1f} | "
            f"{s.max_ms:.1f} | {s.server_cpu_us:.2f} | "
            f"{s.server_cpu_pct:.0f}% | {s.loadgen_cpu_pct:.0f}% | "
            f"{s.other_pct + s.steal_pct:.0f}% | {s.pub_rate:,.0f} | "
            f"{s.max_burst} | "
            + ("—" if s.frames_per_write != s.frames_per_write else f"{s.frames_per_write:.2f}")
            + f" | {s.verdict} |"
        )
    return [*out, ""]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def judge(row: Step, ref: Step, r: float, limit: float, *, strict: bool) -> str:
    """PASS/MISS of the ratio ``r`` (``row`` over the memory ``ref``) against ``limit``, with
    whatever makes the comparison doubtful."""
    if not math.isfinite(r):
        return "n/a (no figure)"
    if not row.sustained:
        verdict = "MISS (step not sustained)"
    elif not ref.sustained:
        verdict = "inconclusive (memory step not sustained)"
    else:
        verdict = "PASS" if (r < limit if strict else r <= limit) else "MISS"
    doubts = []
    if not (row.valid and ref.valid):
        doubts.append("INVALID step: load gen > 85%")
    if row.disturbed or ref.disturbed:
        doubts.append("DISTURBED step")
    return verdict + (f" ({', '.join(doubts)})" if doubts else "")


def fratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if math.isfinite(r) else "n/a"


def md_redis(sec: RedisSection) -> list[str]:
    memory = {s.rate: s for s in sec.rows.get(MEMORY_ROW, [])}
    redis_rows = [kind for kind in sec.rows if kind != MEMORY_ROW]
    idle_share = " and ".join(
        f"{sec.redis_idle_pct * 1e4 / rate:.0f} µs per publish at {rate} msgs/s"
        for rate in sorted({min(sec.rates), max(sec.rates)})
    )
    cpu_rule = f"CPU <= {CPU_TARGET:g}x"
    p99_rule = f"p99 < {P99_TARGET:g}x at {P99_TARGET_RATE}/s"
    lines = [
        f"#### Scale-out on Redis: N = {sec.n} subscribers on one topic",
        "",
        "| configuration | msgs/s | deliveries/s | reach | p50 ms | p99 ms | max ms "
        "| server+redis µs/delivery | redis µs/publish | µs/delivery vs memory "
        "| p99 vs memory | CPU 0 (nodes + redis) | load gen CPU | other load | step | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    summary: list[str] = []
    for rate in sec.rates:
        ref = memory.get(rate)
        for kind, steps in sec.rows.items():
            s = next((x for x in steps if x.rate == rate), None)
            if s is None:
                continue
            cpu_r = p99_r = float("nan")
            targets = "reference"
            if kind != MEMORY_ROW:
                targets = "n/a (no memory step)"
            if kind != MEMORY_ROW and ref is not None:
                cpu_r = fratio(s.server_cpu_us, ref.server_cpu_us)
                p99_r = fratio(s.p99_ms, ref.p99_ms)
                verdicts = []
                if kind == ONE_NODE_ROW:
                    cpu = judge(s, ref, cpu_r, CPU_TARGET, strict=False)
                    verdicts.append(f"{cpu_rule}: {cpu}")
                    summary.append(
                        f"| server+redis µs/delivery <= {CPU_TARGET:g}x memory | {kind} | "
                        f"{rate} | {ref.server_cpu_us:.2f} | {s.server_cpu_us:.2f} | "
                        f"{fmt_ratio(cpu_r)} | {cpu} |"
                    )
                if rate == P99_TARGET_RATE:
                    p99 = judge(s, ref, p99_r, P99_TARGET, strict=True)
                    verdicts.append(f"{p99_rule}: {p99}")
                    summary.append(
                        f"| p99 publish→receive < {P99_TARGET:g}x memory at {P99_TARGET_RATE} "
                        f"msgs/s | {kind} | {rate} | {ref.p99_ms:.1f} ms | {s.p99_ms:.1f} ms | "
                        f"{fmt_ratio(p99_r)} | {p99} |"
                    )
                targets = "; ".join(verdicts) or "—"
            redis_us = f"{s.redis_cpu_us:.1f}" if math.isfinite(s.redis_cpu_us) else "—"
            lines.append(
                f"| {kind} | {rate} | {s.deliveries_per_s:,.0f} | {100 * s.reach:.3f}% | "
                f"{s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.max_ms:.1f} | {s.server_cpu_us:.2f}"
                + ("" if s.cpu_range is None else f" ({s.cpu_range[0]:.2f}-{s.cpu_range[1]:.2f})")
                + " | "
                f"{redis_us} | {fmt_ratio(cpu_r) if kind != MEMORY_ROW else '—'} | "
                f"{fmt_ratio(p99_r) if kind != MEMORY_ROW else '—'} | "
                f"{s.server_cpu_pct:.0f}% | {s.loadgen_cpu_pct:.0f}% | "
                f"{s.other_pct + s.steal_pct:.0f}% | {s.verdict} | {targets} |"
            )
    lines += [
        "",
        "| target | configuration | msgs/s | memory | redis | ratio | result |",
        "|---|---|---:|---:|---:|---:|---|",
        *summary,
    ]
    if P99_TARGET_RATE not in sec.rates:
        lines.append(f"| p99 target | — | {P99_TARGET_RATE} | — | — | — | not run |")
    if not any(kind == ONE_NODE_ROW for kind in redis_rows):
        lines.append(f"| CPU target | {ONE_NODE_ROW} | — | — | — | — | not run |")
    lines += [
        "",
        (
            f"Each cell is the median of {sec.runs} interleaved runs by CPU per delivery "
            "(that run's other figures with it; the range over the runs in parentheses). "
            if sec.runs > 1
            else ""
        )
        + f"Placement: the hub node(s) and `redis-server` {sec.redis_version} (its threads' "
        f'affinity: CPU {", ".join(map(str, sec.redis_affinity))}; `--save "" --appendonly '
        f"no`, loopback, a free port) all run on CPU {SERVER_CPU}; the load generator has CPU "
        f"{LOADGEN_CPU}. The three configurations are stepped in turn at each rate, all "
        "connected throughout (an idle one costs nothing but the Redis nodes' 1 s probes); "
        "each Redis configuration has its own key prefix, so its publishes reach only its "
        "own subscribers. In the two-node case node 1 runs the publisher and the load "
        "generator connects half the clients to each node; every delivery goes through "
        "Redis pub/sub (a node's own publishes too).",
        "",
        "*server+redis µs/delivery* is the CPU of every hub node plus Redis's over the "
        "window, divided by publishes x N; *redis µs/publish* is Redis's alone, divided by "
        f"publishes (Redis CPU: {sec.cpu_source}; it includes what Redis uses when nothing "
        f"is published, housekeeping and the nodes' probes: {sec.redis_idle_pct:.2f}% of a "
        f"core here, i.e. {idle_share}). "
        "*CPU 0* is their sum in % of that core. The Redis publisher awaits `hub.publish` "
        f"with up to {REDIS_MAX_INFLIGHT} publishes in flight (each payload's `t0` is taken "
        "when it is handed to the hub, so the Redis round trip is in the latency); the "
        "memory one calls `hub.publish_nowait`. Latency is sampled on one frame in ten; *max* "
        "is the largest sample. Targets (from the scale-out issue, stated at N = 1,000): one "
        f"node on Redis within {CPU_TARGET:g}x the in-memory node's server CPU per delivery; "
        f"p99 publish→receive under {P99_TARGET:g}x in-memory at {P99_TARGET_RATE} msgs/s. A "
        "target is MISSed by a step that is not sustained; INVALID or DISTURBED steps on "
        "either side are flagged."
        + (
            f" This run has N = {sec.n}: the targets are judged at that N." if sec.n != 1000 else ""
        ),
    ]
    return lines


# Targets of the A/B phases (issue 9): CPU per delivery at 100k deliveries/s; p99 against
# the baseline at N = 1000 and at N = 50; the largest latency never above 2x the baseline's.
CPU_TARGETS = {100_000: 0.6}  # deliveries/s -> ratio (other rates: 0.85x, the earlier goal)
P99_VS_WS = (1.0, 1.2)  # at N = cfg.n, at N = cfg.high_n
MAX_VS_WS = 2.0


def ab_median(runs: list[Step], field: str) -> float:
    """The median of ``field`` over the valid runs (nan when none is valid)."""
    values = [getattr(step, field) for step in runs if step.valid]
    return median(values) if values else float("nan")


def ab_range(runs: list[Step], field: str, digits: int) -> str:
    """``min-max`` of ``field`` over the valid runs (empty when none is valid)."""
    values = [getattr(step, field) for step in runs if step.valid]
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else ""


def md_ab_cpu(res: Results, cfg: Config) -> list[str]:
    lines = [
        f"#### Server CPU per delivery at fixed rates, N = {cfg.n} "
        f"({cfg.ab_repeats} interleaved run(s) each; median, min-max)",
        "",
        f"*{FLOOR}* is the reference, not a contender: a bare `asyncio.Protocol` that frames "
        "each message once and calls `transport.write` for each subscriber, with no parsing, "
        "limits, history or bookkeeping: the least an asyncio server can spend per delivery.",
        "",
        "| msgs/s | deliveries/s | "
        + " | ".join(f"{kind} µs/delivery" for kind in AB_KINDS)
        + " | tether / websockets | floor / websockets | tether / floor |",
        "|---:|---:|" + "---:|" * (len(AB_KINDS) + 3),
    ]
    for rate in cfg.ab_rates:
        cells = []
        for kind in AB_KINDS:
            runs = [s.server_cpu_us for s in res.ab[kind][rate] if s.valid]
            cells.append(
                f"{median(runs):.2f} ({min(runs):.2f}-{max(runs):.2f})" if runs else "n/a (invalid)"
            )
        t, w, f = (ab_median(res.ab[kind][rate], "server_cpu_us") for kind in AB_KINDS)
        lines.append(
            f"| {rate} | {rate * cfg.n:,} | {' | '.join(cells)} | "
            f"{fmt_ratio(fratio(t, w))} | {fmt_ratio(fratio(f, w))} | {fmt_ratio(fratio(t, f))} |"
        )
    return [*lines, ""]


def md_ab_latency(res: Results, cfg: Config) -> list[str]:
    lines = [
        "#### Latency at fixed rates (interleaved runs; each figure is the median over the "
        "valid runs of that run's figure; p99's min-max over them in brackets)",
        "",
        "| N | msgs/s | server | runs (valid, sustained) | p50 ms | p99 ms | p99.9 ms | max ms "
        "| server µs/delivery |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, runs in ((cfg.n, res.ab), (cfg.high_n, res.lat)):
        for rate in runs["tether"]:
            for kind in AB_KINDS:
                steps = runs[kind][rate]
                valid = sum(s.valid for s in steps)
                sustained = sum(s.valid and s.sustained for s in steps)
                figures = " | ".join(
                    f"{ab_median(steps, field):.{digits}f}"
                    + (f" ({ab_range(steps, field, digits)})" if field == "p99_ms" else "")
                    for field, digits in (
                        ("p50_ms", 1),
                        ("p99_ms", 1),
                        ("p999_ms", 1),
                        ("max_ms", 1),
                        ("server_cpu_us", 2),
                    )
                )
                lines.append(
                    f"| {n} | {rate} | {kind} | {len(steps)} ({valid}, {sustained}) | {figures} |"
                )
    return [*lines, ""]


def md_memory(res: Results, cfg: Config) -> list[str]:
    """The in-memory sections: stepped rate, high rate, fixed-rate A/B, RSS, ratios."""
    lines: list[str] = []
    lines += md_steps(
        f"Stepped publish rate: N = {cfg.n} subscribers on one topic",
        [s for kind in KINDS for s in res.steps[kind]],
    )
    lines += md_steps(
        f"High per-topic rate: N = {cfg.high_n} subscribers (several messages per loop "
        "iteration: Tether coalesces them into one write per subscriber)",
        [s for kind in KINDS for s in res.high[kind]],
    )
    lines += md_ab_cpu(res, cfg)
    lines += md_ab_latency(res, cfg)
    lines += [
        "",
        "#### Idle connections: server RSS growth per subscribed connection",
        "",
        "| server | N | RSS before (MiB) | RSS after (MiB) | KiB per connection |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for rss in res.rss[kind]:
            lines.append(
                f"| {kind} | {rss['n']} | {rss['before_kib'] / 1024:.1f} | "
                f"{rss['after_kib'] / 1024:.1f} | {rss['per_conn_kib']:.1f} |"
            )
    lines += [
        "",
        "#### Ratios (tether / websockets baseline) against the targets",
        "",
        "| figure | tether | websockets | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for rate in cfg.ab_rates:
        tm, bm = (ab_median(res.ab[kind][rate], "server_cpu_us") for kind in KINDS)
        r = fratio(tm, bm)
        limit = CPU_TARGETS.get(rate * cfg.n, 0.85)
        lines.append(
            f"| server CPU µs/delivery, N={cfg.n} @ {rate} msgs/s (median of "
            f"{cfg.ab_repeats}) | {tm:.2f} | {bm:.2f} | {fmt_ratio(r)} | <= {limit}x | "
            f"{yes(r <= limit)} |"
        )
    for n, runs, limit in ((cfg.n, res.ab, P99_VS_WS[0]), (cfg.high_n, res.lat, P99_VS_WS[1])):
        for rate in runs["tether"]:
            for field, name, lim in (("p99_ms", "p99", limit), ("max_ms", "max", MAX_VS_WS)):
                tm, bm = (ab_median(runs[kind][rate], field) for kind in KINDS)
                r = fratio(tm, bm)
                lines.append(
                    f"| {name} ms, N={n} @ {rate} msgs/s (median of {len(runs['tether'][rate])}) "
                    f"| {tm:.1f} | {bm:.1f} | {fmt_ratio(r)} | <= {lim}x | {yes(r <= lim)} |"
                )
    base_high = {s.rate: s for s in res.high["websockets"] if s.valid and s.sustained}
    for s in res.high["tether"]:
        base = base_high.get(s.rate)
        if base is None or not (s.valid and s.sustained):
            continue
        r = s.server_cpu_us / base.server_cpu_us
        lines.append(
            f"| server CPU µs/delivery, N={cfg.high_n} @ {s.rate} msgs/s (single run) | "
            f"{s.server_cpu_us:.2f} | {base.server_cpu_us:.2f} | {r:.2f}x | <= 0.85x | "
            f"{yes(r <= 0.85)} |"
        )
    for label, steps in ((f"N={cfg.n}", res.steps), (f"N={cfg.high_n}, high rate", res.high)):
        tstep, tbound = max_sustained(steps["tether"])
        bstep, bbound = max_sustained(steps["websockets"])
        tm = tstep.deliveries_per_s if tstep else 0.0
        bm = bstep.deliveries_per_s if bstep else 0.0
        if bm and tm >= 1.15 * bm and "lower bound" not in bbound:
            met = "yes"
        elif bm and tm < 1.15 * bm and "lower bound" in tbound:
            met = "inconclusive (tether's figure is a lower bound)"
        elif "lower bound" in bbound:
            met = "inconclusive (the baseline's figure is a lower bound)"
        else:
            met = "**no**"
        lines.append(
            f"| max sustained deliveries/s ({label}) | {tm:,.0f} ({tbound}) | "
            f"{bm:,.0f} ({bbound}) | {ratio(tm, bm)} | >= 1.15x | {met} |"
        )
    for tr, br in zip(res.rss["tether"], res.rss["websockets"], strict=True):
        lines.append(
            f"| RSS KiB per idle connection, N={tr['n']} | {tr['per_conn_kib']:.1f} | "
            f"{br['per_conn_kib']:.1f} | {ratio(tr['per_conn_kib'], br['per_conn_kib'])} | "
            f"<= 16 KiB | {yes(tr['per_conn_kib'] <= 16)} |"
        )
    lines.append("")
    for kind in KINDS:
        for kind_steps in (res.steps[kind], res.high[kind]):
            top = highest_sustained(kind_steps)
            if top is not None and top is not max_sustained(kind_steps)[0]:
                lines.append(
                    f"- {kind} also sustained {top.deliveries_per_s:,.0f} deliveries/s "
                    f"(N={top.n}, {top.rate} msgs/s: p99 {top.p99_ms:.1f} ms, reach "
                    f"{100 * top.reach:.2f}%, server CPU {top.server_cpu_pct:.0f}%, load gen "
                    f"{top.loadgen_cpu_pct:.0f}%), past a step the load generator made INVALID; "
                    "not counted above."
                )
    return lines


def render(res: Results, cfg: Config, quick: bool) -> str:
    lines = [
        "## Fan-out benchmark results" + (" (--quick)" if quick else ""),
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}. Server pinned to CPU {SERVER_CPU}, "
        f"load generator to CPU {LOADGEN_CPU}. Warm-up {cfg.warmup:g} s and measurement "
        f"{cfg.measure:g} s per step. Run at {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
    ]
    if res.steps:
        lines += md_memory(res, cfg)
    if res.redis is not None:
        lines += md_redis(res.redis)
    elif res.redis_error:
        lines += ["#### Scale-out on Redis", "", f"**Not run**: {res.redis_error}", ""]
    lines += [
        "",
        f"A step is *sustained* when p99 < {P99_LIMIT * 1000:.0f} ms, reach >= "
        f"{REACH_MIN * 100:.1f}% and the publisher achieved >= {RATE_KEPT_MIN * 100:.0f}% of "
        f"its rate; it is *INVALID* when the load generator used more than "
        f"{LOADGEN_VALID_MAX * 100:.0f}% of its core (the client side, not the server, may then "
        "be what limits it). A server stops stepping at its first step not sustained (the Redis "
        "section runs every rate, reconnecting its N subscribers after a failed step). *Max "
        "sustained* is the last step of the unbroken run of sustained, valid steps.",
        "",
    ]
    return "\n".join(lines)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (< 1 min), smoke test")
    parser.add_argument(
        "--markdown",
        default=str(Path(__file__).with_name("results.md")),
        help="where to write the markdown report (default: benchmarks/results.md)",
    )
    parser.add_argument(
        "--only-redis",
        action="store_true",
        help="run only the 'Scale-out on Redis' section (with --quick: its reduced form)",
    )
    # The server roles (subprocesses of the orchestrator):
    parser.add_argument(
        "--role",
        choices=["tether-server", "tether-redis-server", "ws-server", "floor-server"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redis-prefix", default="tether", help=argparse.SUPPRESS)
    parser.add_argument(
        "--publisher", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    raise_nofile()
    if args.role is not None:
        pin(SERVER_CPU)
        kind = {
            "tether-server": "tether",
            "tether-redis-server": "tether-redis",
            "floor-server": FLOOR,
        }.get(args.role, "websockets")
        if kind == "tether-redis" and not args.redis_url:
            parser.error("--role tether-redis-server needs --redis-url")
        asyncio.run(
            server_main(
                kind,
                redis_url=args.redis_url,
                redis_prefix=args.redis_prefix,
                publishing=args.publisher,
            )
        )
        return
    pin(LOADGEN_CPU)
    cfg = QUICK if args.quick else FULL
    busy0, steal0 = machine_cpu()
    time.sleep(1.0)
    busy1, steal1 = machine_cpu()
    if busy1 - busy0 + steal1 - steal0 > OTHER_MAX / 100:
        log(
            f"warning: the machine is already {100 * (busy1 - busy0 + steal1 - steal0):.0f}% "
            "busy; disturbed steps will be run again (see the 'other load' column)"
        )
    started = time.monotonic()
    results = Results() if args.only_redis else run_all(cfg)
    try:
        results.redis = run_redis(cfg)
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. no redis-server: keep the rest
        results.redis_error = f"{type(exc).__name__}: {exc}"
        log(f"the Redis section failed: {results.redis_error}")
    log(f"done in {time.monotonic() - started:.0f} s")
    report = render(results, cfg, args.quick)
    print(report)
    Path(args.markdown).write_text(report)
    log(f"wrote {args.markdown}")
    if results.redis_error:
        sys.exit(1)


if __name__ == "__main__":
    main()
