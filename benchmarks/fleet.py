"""A resilient fleet through a hub crash and a graceful restart, with the shipped defaults.

Run ``python benchmarks/fleet.py`` (about four minutes) or ``--quick`` (N = 500, short).

What ``storm.py`` leaves out: clients that behave like Tether's own (full-jitter backoff
with the client's default base/factor/cap, attempt counting with ``stable_after``, the
circuit after ``max_attempts``, 1012/1013 retry hints, ``Retry-After`` on 429/503, resume
from their cursors) receiving a live feed, and a hub that really dies. Four phases, each
on a fleet that has been connected longer than ``stable_after`` (so its retry counters
were reset, as in production):

* ``memory, SIGKILL``: ``tether serve`` (in-memory history) is killed with SIGKILL and
  started again, as a supervisor would. History is gone: every client must be *told*
  (a resync naming the missing offsets), none may lose a message silently.
* ``memory, SIGTERM``: a graceful restart: every client gets 1012 with a retry hint spread
  over ``restart_spread`` (10 s), then a new process starts.
* ``redis, SIGKILL`` / ``redis, SIGTERM``: the same with ``--redis-url`` (durable history)
  while a separate publisher keeps publishing straight into Redis (``tether.Publisher``)
  through the outage: zero messages may be lost, none reported missing.

Processes: the hub (``python -m tether.cli serve``, defaults except the port and an API
key, pinned to CPU 0 with redis-server and the publisher); the load generator (this
process, CPU 1). The hub's per-address limits are *not* lifted: the clients come from
``N / PER_ADDRESS`` loopback addresses (127.0.1.x, 127.0.2.x, ...), ``PER_ADDRESS`` = 20
each, like offices behind NAT, so the default handshake rate (20/s, burst 40) and
connection cap per address (256) are what the storm meets.

The load generator: raw non-blocking sockets in one epoll loop and, per client, the
Python client's own sans-I/O core (``tether.client.session.ClientSession``: resume cursors,
duplicate drop, gap arithmetic, heartbeat replies) and ``tether.backoff.backoff_delay``.
The reconnect policy around them mirrors ``tether/client/aio.py`` (the clients issue moves
it into a shared core). It reports its CPU: a phase above 85 % of its core is INVALID.

Measured per phase, from the moment the new hub serves (its "tether hub on" line, read
in the epoll loop): time until 50 %, 99 % and 100 % of the fleet are back *and receiving*
(a message delivered after re-subscribing), the peak rate of accepted handshakes (101s per
100 ms, per second), handshakes refused (429/503, by status), connects refused while the
hub was down, clients stranded in FAILED (the circuit open: must be 0), the kernel's
ListenOverflows/ListenDrops/TCPSynRetrans around the phase, and loss: per client, every
offset of the final epoch from its first delivery there to the head must have been
delivered or reported missing (``silent``: must be 0); in Redis mode no offset may be
reported missing either (``lost``: must be 0).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import errno
import heapq
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from fanout import (
    LOADGEN_CPU,
    LOADGEN_VALID_MAX,
    SERVER_CPU,
    cpu_model,
    percentile,
    pin,
    raise_nofile,
)
from storm import frame_at, masked_frame, tcp_counters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tether.backoff import backoff_delay  # noqa: E402
from tether.client.lifecycle import parse_close_hint  # noqa: E402
from tether.client.session import ClientSession, Delivery, Resync  # noqa: E402
from tether.config import ClientConfig, OutboxPolicy  # noqa: E402
from tether.errors import HINTED_CODES  # noqa: E402
from tether.outbox import Outbox  # noqa: E402

TOPIC = "fleet"
API_KEY = "fleet-bench-key"
RATE = 10.0  # messages per second on the topic: every client receives them all
PER_ADDRESS = 20  # clients per source address (an office behind NAT)
COUNTERS = ("TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPSynRetrans")
BACK_TARGET = 10.0  # s: 99 % back and receiving after the hub serves again
RECOVERY_DEADLINE = 60.0  # s: a phase gives up on stragglers after this
HANDSHAKE_MAX = 16384
DEFAULTS = ClientConfig()

IDLE, CONNECTING, HANDSHAKE, OPEN, FAILED = range(5)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def backoff(attempts: int) -> float:
    """As ``Client._backoff``: full jitter with the client's default policy."""
    c = DEFAULTS
    return backoff_delay(attempts, base=c.backoff_base, factor=c.backoff_factor, cap=c.backoff_cap)


class Member:
    """One client: a socket, the client's sans-I/O session, and its reconnect state."""

    __slots__ = (
        "attempts",
        "buf",
        "connected_at",
        "deadline",
        "epoch",
        "fd",
        "first",
        "gaps",
        "got",
        "index",
        "last",
        "resyncs",
        "retry_at",
        "session",
        "sock",
        "source",
        "state",
        "waiting_back",
    )

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.buf = b""
        self.session = ClientSession(outbox=Outbox(max_size=1, policy=OutboxPolicy.REJECT_NEW))
        self.session.subscribe(TOPIC)
        self.attempts = 0
        self.retry_at = 0.0
        self.deadline = 0.0  # connect_timeout of the attempt in progress
        self.connected_at = 0.0
        self.waiting_back = False
        # Per epoch: offsets delivered (first, last, count) and gaps reported.
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.got: collections.Counter[str] = collections.Counter()
        self.gaps: list[tuple[str, int, int | None]] = []
        self.resyncs = 0
        self.epoch = ""  # of the latest delivery


@dataclasses.dataclass
class Phase:
    mode: str
    kill: str
    n: int
    serving_at: float = 0.0
    down_for: float = 0.0  # signal -> new hub serving
    back: list[float] = dataclasses.field(default_factory=list)
    accepts: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    refused_status: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    refused_down: int = 0
    close_codes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    stranded: int = 0
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    loadgen_cpu: float = 0.0
    told: int = 0  # clients that received a resync in this phase
    silent: int = 0  # offsets neither delivered nor reported, summed over clients
    lost: int = 0  # offsets reported missing (durable history: must be 0)
    published: int = 0
    publish_failed: int = 0

    def at(self, q: float) -> float:
        values = sorted(self.back)
        if len(values) < self.n * q - 1e-9:
            return float("nan")
        return percentile(values, q) if q < 1 else (values[-1] if values else float("nan"))


class Hub:
    """``tether serve`` as a subprocess; its "tether hub on" line says it serves."""

    def __init__(self, port: int, redis_url: str | None) -> None:
        self.port = port
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""
        self.serving = False

    def start(self) -> None:
        argv = [sys.executable, "-m", "tether.cli", "serve", "--port", str(self.port)]
        argv += ["--api-keys", API_KEY]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("TETHER_")}
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *argv], stderr=subprocess.PIPE, env=env
        )
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.buf = b""
        self.serving = False

    @property
    def fd(self) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.fileno()

    def readable(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        chunk = b""
        with contextlib.suppress(BlockingIOError):
            chunk = self.proc.stderr.read() or b""
        self.buf = (self.buf + chunk)[-4096:]
        if b"tether hub on" in self.buf:
            self.serving = True
        for line in chunk.splitlines():
            if b"Traceback" in line or b"error" in line.lower():
                log(f"  hub: {line.decode(errors='replace')}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Publisher:
    """10 messages/s: over HTTP to the hub (memory), or straight into Redis (durable)."""

    def __init__(self, port: int, redis_url: str | None) -> None:
        code = PUBLISHER_REDIS if redis_url else PUBLISHER_HTTP
        target = redis_url or f"http://127.0.0.1:{port}/publish"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), sys.executable, "-c", code, target, str(RATE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        result: dict[str, Any] = json.loads(self.proc.stdout.read() or b"{}")
        self.proc.wait(10)
        return result


PUBLISHER_HTTP = f"""
import json, sys, threading, time, httpx
url, rate = sys.argv[1], float(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
ok = failed = 0
heads = {{}}
with httpx.Client(timeout=2, headers={{"X-API-Key": "{API_KEY}"}}) as http:
    due = time.monotonic()
    while not stop.is_set():
        try:
            r = http.post(url, json={{"topic": "{TOPIC}", "data": {{"t": time.time()}}}})
            r.raise_for_status()
            body = r.json()
            heads[body["epoch"]] = body["offset"]
            ok += 1
        except httpx.HTTPError:
            failed += 1
        due += 1 / rate
        stop.wait(max(0.0, due - time.monotonic()))
print(json.dumps({{"published": ok, "failed": failed, "heads": heads}}))
"""

PUBLISHER_REDIS = f"""
import asyncio, json, sys, time
from tether import Publisher
async def main():
    url, rate = sys.argv[1], float(sys.argv[2])
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    ok = failed = 0
    heads = {{}}
    async with Publisher(url) as publisher:
        due = time.monotonic()
        while not stdin_closed.done():
            try:
                offset = await publisher.publish("{TOPIC}", {{"t": time.time()}})
                ok += 1
                heads["redis"] = offset
            except Exception:
                failed += 1
            due += 1 / rate
            await asyncio.wait([stdin_closed], timeout=max(0.0, due - time.monotonic()))
    print(json.dumps({{"published": ok, "failed": failed, "heads": heads}}))
asyncio.run(main())
"""


class Fleet:
    """N members in one epoll loop."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.ep = select.epoll()
        self.by_fd: dict[int, Member] = {}
        sources = [
            f"127.0.{1 + i // 250}.{1 + i % 250}"
            for i in range((n + PER_ADDRESS - 1) // PER_ADDRESS)
        ]
        self.members = [Member(i, sources[i // PER_ADDRESS]) for i in range(n)]
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: tether.v1\r\n\r\n"
        ).encode()
        self.timers: list[tuple[float, int]] = []  # (retry_at, index), kept as a heap
        self.phase: Phase | None = None
        self.hub_down = False

    # --- connection lifecycle ------------------------------------------------------------

    def attempt(self, m: Member, now: float) -> None:
        m.attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((m.source, 0))
        m.sock, m.fd, m.buf = sock, sock.fileno(), b""
        m.deadline = now + DEFAULTS.connect_timeout
        err = sock.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            self.attempt_failed(m, now, refused=err == errno.ECONNREFUSED)
            return
        m.state = CONNECTING
        self.by_fd[m.fd] = m
        self.ep.register(m.fd, select.EPOLLOUT)

    def close_socket(self, m: Member) -> None:
        if m.sock is not None:
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(m.fd)
            self.by_fd.pop(m.fd, None)
            m.sock.close()
            m.sock = None

    def schedule(self, m: Member, delay: float, now: float) -> None:
        m.state = IDLE
        m.retry_at = now + delay
        heapq.heappush(self.timers, (m.retry_at, m.index))

    def attempt_failed(
        self,
        m: Member,
        now: float,
        *,
        refused: bool = False,
        status: int | None = None,
        hint: float | None = None,
    ) -> None:
        """As ``Client._attempt`` after ``ConnectFailed``: circuit, or hint, or backoff."""
        self.close_socket(m)
        if self.phase is not None:
            if refused:
                self.phase.refused_down += 1
            if status is not None:
                self.phase.refused_status[status] += 1
        if m.attempts >= DEFAULTS.max_attempts:
            m.state = FAILED
            return
        delay = hint if hint is not None else backoff(m.attempts)
        self.schedule(m, delay, now)

    def dropped(self, m: Member, now: float, code: int, reason: str) -> None:
        """As ``Client._after_close``: a stable connection resets the counter; hints win."""
        self.close_socket(m)
        m.session.connection_lost()
        if self.phase is not None:
            self.phase.close_codes[code] += 1
        if now - m.connected_at >= DEFAULTS.stable_after:
            m.attempts = 0
        hint = parse_close_hint(reason) if code in HINTED_CODES else None
        delay = hint if hint is not None else backoff(m.attempts)
        m.waiting_back = True
        self.schedule(m, delay, now)

    # --- I/O -------------------------------------------------------------------------------

    def writable(self, m: Member, now: float) -> None:
        assert m.sock is not None
        err = m.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                m.sock.send(self.request)
            except OSError as exc:
                err = exc.errno or errno.EIO
        if err:
            self.attempt_failed(m, now, refused=err == errno.ECONNREFUSED)
            return
        m.state = HANDSHAKE
        self.ep.modify(m.fd, select.EPOLLIN)

    def readable(self, m: Member, now: float) -> None:
        assert m.sock is not None
        try:
            data = m.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if m.state == OPEN:
                self.dropped(m, now, 1006, "")
            else:
                self.attempt_failed(m, now)
            return
        if m.state == HANDSHAKE:
            data = m.buf + data
            m.buf = b""
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > HANDSHAKE_MAX:
                    self.attempt_failed(m, now)
                else:
                    m.buf = data
                return
            head = data[:end].decode("latin-1")
            status = int(head.split(" ", 2)[1])
            if status != 101:
                retry_after = None
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "retry-after" and value.strip().isdigit():
                        retry_after = float(value.strip())
                self.attempt_failed(m, now, status=status, hint=retry_after)
                return
            m.state = OPEN
            m.connected_at = now
            if self.phase is not None:
                self.phase.accepts[int((now - self.phase.serving_at) * 10)] += 1
            self.send(m, m.session.connection_opened(now=now))
            data = data[end + 4 :]
            if not data:
                return
        self.frames(m, data, now)

    def send(self, m: Member, frames: list[bytes]) -> None:
        if m.sock is not None and frames:
            with contextlib.suppress(OSError):
                m.sock.send(b"".join(masked_frame(1, f) for f in frames))

    def frames(self, m: Member, data: bytes, now: float) -> None:
        if m.buf:
            data = m.buf + data
            m.buf = b""
        pos = 0
        while (frame := frame_at(data, pos)) is not None:
            opcode, start, end = frame
            if opcode == 1:
                events, replies = m.session.receive(data[start:end], now=now)
                self.send(m, replies)
                for event in events:
                    self.event(m, event, now)
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if end - start >= 2 else 1005
                reason = data[start + 2 : end].decode(errors="replace")
                with contextlib.suppress(OSError):
                    assert m.sock is not None
                    m.sock.send(masked_frame(8, code.to_bytes(2, "big")))
                self.dropped(m, now, code, reason)
                return
            elif opcode == 9:
                with contextlib.suppress(OSError):
                    assert m.sock is not None
                    m.sock.send(masked_frame(10, data[start:end]))
            pos = end
        if pos < len(data):
            m.buf = data[pos:]

    def event(self, m: Member, event: object, now: float) -> None:
        if isinstance(event, Delivery):
            epoch = event.epoch
            m.epoch = epoch
            m.first.setdefault(epoch, event.offset)
            m.last[epoch] = event.offset
            m.got[epoch] += 1
            if m.waiting_back and self.phase is not None and self.phase.serving_at:
                m.waiting_back = False
                self.phase.back.append(now - self.phase.serving_at)
        elif isinstance(event, Resync):
            m.resyncs += 1
            for gap in event.missing:
                m.gaps.append((gap.epoch, gap.start, gap.end))

    # --- the loop ----------------------------------------------------------------------------

    def run(self, seconds: float, hub: Hub | None = None, until: Any = None) -> None:
        end = time.monotonic() + seconds
        hub_fd = hub.fd if hub is not None else -1
        if hub is not None:
            self.ep.register(hub_fd, select.EPOLLIN)
        last_poll = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= end or (until is not None and until()):
                    return
                timeout = min(0.05, end - now)
                if self.timers:
                    timeout = max(0.0, min(timeout, self.timers[0][0] - now))
                for fd, _ in self.ep.poll(timeout):
                    if fd == hub_fd:
                        assert hub is not None
                        was = hub.serving
                        hub.readable()
                        if hub.serving and not was and self.phase is not None:
                            self.phase.serving_at = time.monotonic()
                        continue
                    m = self.by_fd.get(fd)
                    if m is None:
                        continue
                    now = time.monotonic()
                    if m.state == CONNECTING:
                        self.writable(m, now)
                    else:
                        self.readable(m, now)
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, index = heapq.heappop(self.timers)
                    m = self.members[index]
                    if m.state == IDLE and m.retry_at <= now:
                        self.attempt(m, now)
                if now - last_poll >= 0.5:  # connect timeouts and the client heartbeat
                    last_poll = now
                    for m in self.members:
                        if m.state in (CONNECTING, HANDSHAKE) and now >= m.deadline:
                            self.attempt_failed(m, now)
                        elif m.state == OPEN:
                            if m.attempts and now - m.connected_at >= DEFAULTS.stable_after:
                                m.attempts = 0  # as the client's heartbeat loop does
                            poll = m.session.poll(now=now)
                            if poll.dead:
                                self.dropped(m, now, 1006, "")
                            else:
                                self.send(m, poll.frames)
        finally:
            if hub is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.ep.unregister(hub_fd)

    def open_all(self, now: float) -> None:
        for m in self.members:
            self.schedule(m, 0.0, now)

    def count(self, state: int) -> int:
        return sum(1 for m in self.members if m.state == state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(SERVER_CPU),
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def recovered(fleet: Fleet, phase: Phase) -> bool:
    """Everyone is back, or the rest is stranded in FAILED (given 15 s to show it)."""
    if len(phase.back) >= phase.n:
        return True
    late = time.monotonic() - phase.serving_at > 15
    return late and fleet.count(FAILED) + len(phase.back) >= phase.n


def run_mode(mode: str, n: int, steady: float) -> list[Phase]:
    """Cold connect, then a SIGKILL phase and a SIGTERM phase on the same fleet."""
    tmp = tempfile.mkdtemp(prefix="tether-fleet-")
    redis_proc, redis_url = start_redis(tmp) if mode == "redis" else (None, None)
    port = free_port()
    hub = Hub(port, redis_url)
    hub.start()
    fleet = Fleet(port, n)
    phases: list[Phase] = []
    publisher: Publisher | None = None
    try:
        fleet.run(30, hub, until=lambda: hub.serving)
        if not hub.serving:
            raise SystemExit("the hub did not start")
        fleet.open_all(time.monotonic())
        fleet.run(
            60,
            hub,
            until=lambda: (
                fleet.count(OPEN) == n and all(m.session.is_live(TOPIC) for m in fleet.members)
            ),
        )
        log(f"  {mode}: {fleet.count(OPEN)} of {n} connected")
        publisher = Publisher(port, redis_url)
        for kill in ("SIGKILL", "SIGTERM"):
            # Longer than stable_after: the fleet's retry counters are reset, as in production.
            fleet.run(steady, hub)
            phase = Phase(mode, kill, n)
            fleet.phase = phase
            for m in fleet.members:
                m.resyncs = 0
            before = tcp_counters()
            cpu0 = time.process_time()
            t_signal = time.monotonic()
            hub.signal(signal.SIGKILL if kill == "SIGKILL" else signal.SIGTERM)
            # The loop keeps running while the old hub goes (a graceful stop takes seconds).
            fleet.run(30, hub, until=lambda: hub.proc is not None and hub.proc.poll() is not None)
            hub.stop()
            hub.start()  # as a supervisor would, at once
            fleet.run(30, hub, until=lambda: hub.serving)
            phase.down_for = phase.serving_at - t_signal
            fleet.run(RECOVERY_DEADLINE, hub, until=partial(recovered, fleet, phase))
            window = time.monotonic() - t_signal
            phase.loadgen_cpu = (time.process_time() - cpu0) / window
            after = tcp_counters()
            phase.counters = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
            phase.stranded = fleet.count(FAILED)
            phase.told = sum(1 for m in fleet.members if m.resyncs)
            phases.append(phase)
            log(
                f"  {mode} {kill}: 99% back in {phase.at(0.99):.2f} s, "
                f"stranded {phase.stranded}, told {phase.told}"
            )
        # Loss accounting: stop publishing, let everyone catch up to the head.
        result = publisher.stop()
        publisher = None
        fleet.run(10, hub)
        # The epoch the fleet ended in: the one most clients' latest delivery was in.
        current = collections.Counter(m.epoch for m in fleet.members if m.epoch)
        final_epoch = current.most_common(1)[0][0] if current else ""
        head = max((m.last.get(final_epoch, 0) for m in fleet.members), default=0)
        silent = lost = 0
        for m in fleet.members:
            first = m.first.get(final_epoch)
            if first is None:
                silent += head
                continue
            reported = sum(
                ((end if end is not None else head) - start + 1)
                for epoch, start, end in m.gaps
                if epoch == final_epoch and start >= first
            )
            expected = head - first + 1
            silent += max(0, expected - m.got[final_epoch] - reported)
            lost += sum(1 for epoch, _, _ in m.gaps if mode == "redis")
        for phase in phases:
            phase.published = int(result.get("published", 0))
            phase.publish_failed = int(result.get("failed", 0))
            phase.silent, phase.lost = silent, lost
        log(f"  {mode}: published {result}, final head {head}, silent {silent}, lost {lost}")
    finally:
        if publisher is not None:
            with contextlib.suppress(Exception):
                publisher.stop()
        hub.stop()
        for m in fleet.members:
            fleet.close_socket(m)
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return phases


def s2(x: float) -> str:
    return "—" if x != x else f"{x:.2f}"


def render(phases: list[Phase], n: int, steady: float) -> str:
    lines = [
        "## A resilient fleet through a crash and a graceful restart",
        "",
        f"`benchmarks/fleet.py` (part of `make bench`): {n:,} clients from {n // PER_ADDRESS} "
        f"loopback addresses ({PER_ADDRESS} each, so the hub's default per-address limits "
        "apply), each with the Python client's sans-I/O session and default reconnect policy "
        f"(backoff {DEFAULTS.backoff_base:g} s x{DEFAULTS.backoff_factor:g} to "
        f"{DEFAULTS.backoff_cap:g} s, "
        f"full jitter, {DEFAULTS.max_attempts} attempts, counter reset after "
        f"{DEFAULTS.stable_after:g} s stable), receiving {RATE:g} msgs/s on one topic from a "
        "separate publisher; the hub is the shipped `tether serve` with its defaults. Each phase "
        f"starts after {steady:g} s of steady state. Times are from the new hub serving "
        "(its start-up line), *back* = re-subscribed and a message delivered.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}). "
        f"Run at {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| history | restart | hub down (s) | 50 % back (s) | 99 % back (s) | 100 % back (s) | "
        "peak accepts/s | refused (status) | connects refused while down | stranded (FAILED) | "
        "told of a gap | silent loss | gaps reported | ListenOverflows | ListenDrops | "
        "TCPSynRetrans | load gen CPU | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in phases:
        peak = max(p.accepts.values(), default=0) * 10
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(p.refused_status.items())) or "0"
        problems = []
        if p.at(0.99) != p.at(0.99) or p.at(0.99) > BACK_TARGET:
            problems.append(f"99 % not back in {BACK_TARGET:g} s")
        if p.stranded:
            problems.append("stranded")
        if p.silent:
            problems.append("silent loss")
        if p.mode == "redis" and p.lost:
            problems.append("lost")
        if p.mode == "memory" and p.told < p.n:
            problems.append("not every client told")
        if p.loadgen_cpu > LOADGEN_VALID_MAX:
            problems.append("INVALID (load gen > 85%)")
        told = f"{p.told:,}" + (" (must be all)" if p.mode == "memory" else "")
        lines.append(
            f"| {p.mode} | {p.kill} | {s2(p.down_for)} | {s2(p.at(0.5))} | {s2(p.at(0.99))} | "
            f"{s2(p.at(1.0))} | {peak:,} | {refused} | {p.refused_down:,} | {p.stranded} | "
            f"{told} | {p.silent} | {p.lost if p.mode == 'redis' else '—'} | "
            + " | ".join(str(p.counters.get(name, 0)) for name in COUNTERS)
            + f" | {p.loadgen_cpu:.0%} | "
            f"{'ok' if not problems else '; '.join(problems)} |"
        )
    lines += [
        "",
        "Close codes seen: "
        + "; ".join(
            f"{p.mode} {p.kill}: "
            + ", ".join(f"{c} x{k}" for c, k in sorted(p.close_codes.items()))
            for p in phases
        )
        + ". *silent loss*: offsets of the final epoch, from each client's first delivery "
        "there to the head, neither delivered nor reported missing (summed over clients, for the "
        "whole run). *gaps reported*: resyncs with durable history (Redis: must be 0). "
        "*told of a gap*: clients whose session reported a resync in that phase (in-memory "
        "history is gone after a restart: all of them must be told).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 500, short steady state")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path(__file__).with_name("fleet-results.md"),
        help="where to write the markdown report (default: benchmarks/fleet-results.md)",
    )
    parser.add_argument("--modes", nargs="+", default=["memory", "redis"], help="history kinds")
    args = parser.parse_args()
    n = 500 if args.quick else args.clients
    steady = 3.0 if args.quick else DEFAULTS.stable_after + 2
    raise_nofile()
    pin(LOADGEN_CPU)
    phases: list[Phase] = []
    for mode in args.modes:
        phases += run_mode(mode, n, steady)
    text = render(phases, n, steady)
    print(text)
    args.markdown.write_text(text)


if __name__ == "__main__":
    main()
