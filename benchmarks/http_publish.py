"""HTTP publishing rate: ``POST /publish`` on one kept-alive connection vs in-process publishes.

Run ``python benchmarks/http_publish.py`` (a few seconds) or ``--quick`` (about 1 s).

The requirement: publishing over HTTP on one kept-alive connection reaches at least 1,000
publishes/s on this machine, shown beside the in-process ``hub.publish`` rate.

Two processes, as in ``fanout.py``:

* the **hub** (``--role server``, a subprocess pinned to CPU 0): a real ``HubServer`` with its
  default config, an API key for ``POST /publish`` (what a backend presents; ``X-API-Key``), and
  ``internal_port`` set: the second listener without the per-address handshake bucket
  (docs/scaling.md, "HTTP publishing from backends"). Driven over stdin/stdout (``stats``,
  ``inproc M``, ``quit``), it reports its CPU time (``time.process_time()``) and runs the
  in-process measurement itself: M sequential ``await hub.publish(topic, data)``.
* the **load generator**, this process, pinned to CPU 1: a minimal hand-written HTTP/1.1
  client on a blocking socket (``TCP_NODELAY``), one request at a time, reporting its own CPU
  (above 85% of its core a row is INVALID: the client may be what limits it).

Rows, each of M publishes of a ~100-byte payload to one topic with no subscriber (the publish
path alone, the same for every row): (a) in-process, (b) ``POST /publish`` on ONE kept-alive
connection to the public port, (c) a fresh TCP connection per request (``Connection: close``,
as ``curl`` or ``requests.post`` does) to the internal listener, and (d) the same on the public
port, where the default ``handshake_rate`` (20/s, burst 40) refuses most of them with 429:
why (b) or (c) is what a backend should do.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fanout import (
    LOADGEN_CPU,
    LOADGEN_VALID_MAX,
    OTHER_MAX,
    SERVER_CPU,
    OtherLoad,
    ServerProc,
    cpu_model,
    free_port,
    percentile,
    pin,
    raise_nofile,
)

TOPIC = "bench"
PAD = "x" * 54  # the body {"topic":"bench","data":{"seq":N,"pad":"..."}} is ~100 bytes
API_KEY = "bench-http-publish-key"
TARGET = 1000.0  # publishes/s on one kept-alive connection
INPROC_RUNS = 3  # in-process runs; the median is reported
WARMUP = 200  # requests before each HTTP row is measured
PUBLIC_FRESH = 100  # requests of row (d): enough to empty the default bucket (burst 40)
IO_TIMEOUT = 10.0  # per socket operation
MIN_OTHER_WINDOW = 0.2  # s: shorter windows are not judged for other load (10 ms ticks)


@dataclasses.dataclass(frozen=True)
class Config:
    m: int


FULL = Config(m=5000)
QUICK = Config(m=1000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the hub (subprocess, CPU 0) ------------------------------------------------------------


def _reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def server_main(internal_port: int) -> None:
    from tether import Hub
    from tether.server.serve import HubServer

    hub = Hub(host="127.0.0.1", port=0, internal_port=internal_port, api_keys=API_KEY)
    server = HubServer(hub)
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"port": server.port, "internal_port": internal_port, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd, *args = line.decode().split()
        if cmd == "stats":
            _reply({"cpu": time.process_time(), "mono": time.monotonic()})
        elif cmd == "inproc":
            m = int(args[0])
            await hub.publish(TOPIC, {"seq": -1, "pad": PAD})  # first use outside the window
            cpu0, t0 = time.process_time(), time.perf_counter()
            offset = 0
            for seq in range(m):
                offset = await hub.publish(TOPIC, {"seq": seq, "pad": PAD})
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            _reply({"m": m, "wall": wall, "cpu": cpu, "offset": offset})
        elif cmd == "quit":
            _reply({"bye": True})
            break
    await server.stop()


def start_hub() -> tuple[ServerProc, int]:
    """The hub subprocess (pinned to CPU 0, driven over stdin/stdout) and its internal port."""
    internal_port = free_port()
    argv = ["--role", "server", "--internal-port", str(internal_port)]
    return ServerProc("hub", argv, script=__file__), internal_port


# --- the load generator (this process, CPU 1) -----------------------------------------------


class HttpClient:
    """Just enough HTTP/1.1 for ``POST /publish``: Content-Length bodies, nothing else."""

    def __init__(self, port: int, *, keep_alive: bool) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.sock: socket.socket | None = None
        self.buf = b""
        close = b"" if keep_alive else b"Connection: close\r\n"
        self.head = (
            b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-Key: %s\r\n"
            b"Content-Type: application/json\r\n%sContent-Length: "
            % (port, API_KEY.encode(), close)
        )

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, seq: int) -> tuple[int, bytes]:
        """One request; its status and body. A fresh-connection client connects for each."""
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        body = b'{"topic":"%s","data":{"seq":%d,"pad":"%s"}}' % (TOPIC.encode(), seq, PAD.encode())
        sock.sendall(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        buf = self.buf
        for _ in range(1000):  # bounded: a response head is one or two segments
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the hub closed the connection mid-response")
            buf += chunk
        else:
            raise ConnectionError("no end of the response head")
        head = buf[:end].lower()
        status = int(head[9:12])
        i = head.find(b"\r\ncontent-length:")
        length = int(head[i + 17 : head.find(b"\r\n", i + 2)]) if i >= 0 else 0
        start = end + 4
        for _ in range(1000):
            if len(buf) - start >= length:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the hub closed the connection mid-body")
            buf += chunk
        payload = buf[start : start + length]
        self.buf = buf[start + length :]
        if not self.keep_alive or b"\r\nconnection: close" in head:
            self.close()
        return status, payload


@dataclasses.dataclass
class Row:
    label: str
    m: int
    ok: int = 0
    rate: float = 0.0  # successful publishes per second of the window
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)  # offsets out of order, etc.
    server_us: float = float("nan")  # server CPU per request (per publish in-process)
    server_cpu_pct: float = float("nan")
    loadgen_cpu_pct: float = float("nan")
    other_pct: float = float("nan")  # other processes + steal, % of one core
    other_top: str = ""  # the biggest other processes in the window
    note: str = ""

    @property
    def valid(self) -> bool:
        return not self.loadgen_cpu_pct > LOADGEN_VALID_MAX * 100

    @property
    def disturbed(self) -> bool:
        return self.other_pct > OTHER_MAX

    @property
    def flags(self) -> str:
        out = []
        if not self.valid:
            out.append(f"INVALID (load gen > {LOADGEN_VALID_MAX * 100:.0f}%)")
        if self.disturbed:
            out.append(f"DISTURBED (other load {self.other_pct:.0f}%: {self.other_top})")
        return " ".join(out) or "ok"


def inproc(server: ServerProc, m: int) -> Row:
    runs = []
    exclude = {os.getpid(), server.pid}
    for _ in range(INPROC_RUNS):
        load, t0 = OtherLoad(exclude), time.monotonic()
        r = server.cmd(f"inproc {m}")
        span = time.monotonic() - t0
        # Per-process CPU is in clock ticks (10 ms): over a shorter window one tick of
        # anything would read as "disturbed", so it is not judged then.
        other = 100 * load.seconds() / span if span >= MIN_OTHER_WINDOW else float("nan")
        runs.append((r["m"] / r["wall"], r, other, ", ".join(load.top)))
        log(f"  in-process: {runs[-1][0]:,.0f} publishes/s in {r['wall']:.3f} s")
    runs.sort(key=lambda x: x[0])
    rate, r, other, top = runs[len(runs) // 2]
    return Row(
        label=f"in-process `await hub.publish` (median of {INPROC_RUNS})",
        m=m,
        ok=m,
        rate=rate,
        server_us=r["cpu"] / m * 1e6,
        server_cpu_pct=100 * r["cpu"] / r["wall"],
        other_pct=other,
        other_top=top,
        note=", ".join(f"{x[0]:,.0f}" for x in runs) + " /s",
    )


def http_row(label: str, server: ServerProc, port: int, m: int, *, keep_alive: bool) -> Row:
    row = Row(label=label, m=m)
    client = HttpClient(port, keep_alive=keep_alive)
    statuses: dict[int, int] = {}
    seq = 0
    try:
        for _ in range(min(WARMUP, m)):
            client.post(seq)
            seq += 1
        lat: list[float] = []
        last_offset: int | None = None
        s0 = server.cmd("stats")
        exclude = {os.getpid(), server.pid}
        load = OtherLoad(exclude)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = time.monotonic() + max(60.0, m / 50)  # bounded even for a very slow hub
        for _ in range(m):
            t = time.perf_counter()
            status, body = client.post(seq)
            lat.append(time.perf_counter() - t)
            seq += 1
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                offset = json.loads(body)["offset"]
                if last_offset is not None and offset != last_offset + 1:
                    row.errors.append(f"offset {offset} after {last_offset}")
                last_offset = offset
            if time.monotonic() > deadline:
                row.errors.append(f"stopped after {len(lat)} requests (time limit)")
                break
        wall = time.perf_counter() - t0
        cpu1 = time.process_time()
        other_s = load.seconds()
        s1 = server.cmd("stats")
    finally:
        client.close()
    row.ok = statuses.get(200, 0)
    row.statuses = statuses
    row.rate = row.ok / wall
    lat.sort()
    row.p50_ms = percentile(lat, 0.50) * 1000
    row.p99_ms = percentile(lat, 0.99) * 1000
    row.max_ms = lat[-1] * 1000
    server_cpu = s1["cpu"] - s0["cpu"]
    row.server_us = server_cpu / len(lat) * 1e6
    row.server_cpu_pct = 100 * server_cpu / wall
    row.loadgen_cpu_pct = 100 * (cpu1 - cpu0) / wall
    row.other_pct = 100 * other_s / wall
    row.other_top = ", ".join(load.top)
    log(
        f"  {label}: {row.rate:,.0f}/s  p50 {row.p50_ms:.2f} p99 {row.p99_ms:.2f} max "
        f"{row.max_ms:.2f} ms  statuses {statuses}  srv {row.server_us:.0f} µs/req "
        f"({row.server_cpu_pct:.0f}%)  lg {row.loadgen_cpu_pct:.0f}%  other {row.other_pct:.0f}%"
    )
    return row


def public_fresh(server: ServerProc) -> Row:
    """Row (d): a fresh connection per request to the public port, counting the 429s."""
    row = Row(label="fresh connection per request, public port (default `handshake_rate`)", m=0)
    client = HttpClient(server.port, keep_alive=False)
    lat: list[float] = []
    t0 = time.perf_counter()
    for seq in range(PUBLIC_FRESH):
        t = time.perf_counter()
        try:
            status, _ = client.post(seq)
        except OSError:  # a refused socket may be reset rather than answered
            status = 0
        finally:
            client.close()
        lat.append(time.perf_counter() - t)
        row.statuses[status] = row.statuses.get(status, 0) + 1
    wall = time.perf_counter() - t0
    row.m = PUBLIC_FRESH
    row.ok = row.statuses.get(200, 0)
    row.rate = float("nan")  # not a rate: the bucket, not the hub, decides what passes
    lat.sort()
    row.p50_ms = percentile(lat, 0.50) * 1000
    row.p99_ms = percentile(lat, 0.99) * 1000
    row.max_ms = lat[-1] * 1000
    row.note = f"{row.ok} of {PUBLIC_FRESH} published, in {wall:.2f} s"
    log(f"  {row.label}: statuses {row.statuses} in {wall:.2f} s")
    return row


def verdict(keep: Row) -> str:
    ok = keep.rate >= TARGET and keep.ok == keep.m and not keep.errors
    out = "PASS" if ok else "MISS"
    reasons = []
    if keep.ok != keep.m:
        reasons.append(f"{keep.m - keep.ok} of {keep.m} requests not answered 200")
    if keep.errors:
        reasons.append(f"{len(keep.errors)} error(s)")
    if not keep.valid:
        reasons.append("INVALID: load gen > 85%, the client may be what limits it")
    if keep.disturbed:
        reasons.append(f"DISTURBED: other load {keep.other_pct:.0f}% ({keep.other_top})")
    return out + (f" ({'; '.join(reasons)})" if reasons else "")


def fmt(x: float, spec: str, unit: str = "") -> str:
    return format(x, spec) + unit if x == x else "—"


def render(rows: list[Row], keep: Row, inproc_row: Row, cfg: Config, quick: bool) -> str:
    lines = [
        "## HTTP publishing results" + (" (--quick)" if quick else ""),
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, Python "
        f"{platform.python_version()}. Hub pinned to CPU {SERVER_CPU}, load generator to CPU "
        f"{LOADGEN_CPU}. M = {cfg.m} publishes per row (after {WARMUP} unmeasured requests for "
        f"the HTTP rows), sequential: each request waits for its response. Run at "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| path | requests | publishes/s | latency p50 / p99 / max (ms) | responses "
        "| server CPU µs/publish | server CPU | load gen CPU | other load | flags | notes |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        responses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())) or "—"
        lines.append(
            f"| {r.label} | {r.m} | {fmt(r.rate, ',.0f')} | {fmt(r.p50_ms, '.2f')} / "
            f"{fmt(r.p99_ms, '.2f')} / {fmt(r.max_ms, '.2f')} | {responses} | "
            f"{fmt(r.server_us, '.0f')} | {fmt(r.server_cpu_pct, '.0f', '%')} | "
            f"{fmt(r.loadgen_cpu_pct, '.0f', '%')} | {fmt(r.other_pct, '.0f', '%')} | "
            f"{r.flags} | "
            f"{'; '.join([r.note, *r.errors[:3]]).strip('; ')} |"
        )
    lines += [
        "",
        f"**HTTP keep-alive >= {TARGET:,.0f}/s: {verdict(keep)}** — {keep.rate:,.0f} publishes/s "
        f"on one kept-alive connection, {keep.rate / inproc_row.rate:.3f}x the in-process rate "
        f"({inproc_row.rate:,.0f}/s).",
        "",
        "The hub has its default config plus an API key (sent as `X-API-Key`) and "
        "`internal_port` (a second listener on 127.0.0.1, no per-address handshake bucket, "
        "credentials still required). Every publish goes to one topic with no subscriber, and "
        "each HTTP response's offset is checked to follow the previous one. *latency* is the "
        "client's request -> complete response time (with the TCP connect for the fresh-"
        "connection rows); *server CPU µs/publish* is the hub process's CPU over the window "
        "divided by the requests (HTTP parsing, routing, auth and the publish); *other load* "
        "is the CPU of every other process plus steal, in % of one core, and above "
        f"{OTHER_MAX:.0f}% flags the row DISTURBED; the "
        "in-process row is the hub timing its own loop of M `await hub.publish`. A row whose "
        f"load generator used more than {LOADGEN_VALID_MAX * 100:.0f}% of its core is INVALID. "
        "The public-port fresh-connection row is what a backend without keep-alive gets on the "
        "public port: 429 once its address's bucket is empty (use keep-alive or the internal "
        "listener).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M=1000 (a few seconds)")
    parser.add_argument("--m", type=int, default=0, help="publishes per row (default 5000)")
    parser.add_argument(
        "--markdown",
        default=str(Path(__file__).with_name("http_publish-results.md")),
        help="where to write the markdown report (default: benchmarks/http_publish-results.md)",
    )
    parser.add_argument("--role", choices=["server"], help=argparse.SUPPRESS)
    parser.add_argument("--internal-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile()
    if args.role == "server":
        pin(SERVER_CPU)
        asyncio.run(server_main(args.internal_port))
        return
    pin(LOADGEN_CPU)
    cfg = QUICK if args.quick else FULL
    if args.m:
        cfg = Config(m=args.m)
    started = time.monotonic()
    server, internal_port = start_hub()
    try:
        log(f"hub pid {server.pid}: public port {server.port}, internal {internal_port}")
        inproc_row = inproc(server, cfg.m)
        keep = http_row(
            "`POST /publish`, one kept-alive connection (public port)",
            server,
            server.port,
            cfg.m,
            keep_alive=True,
        )
        fresh = http_row(
            "`POST /publish`, fresh connection per request (internal port)",
            server,
            internal_port,
            cfg.m,
            keep_alive=False,
        )
        public = public_fresh(server)  # last: it empties the address's handshake bucket
    finally:
        server.stop()
    log(f"done in {time.monotonic() - started:.0f} s")
    report = render([inproc_row, keep, fresh, public], keep, inproc_row, cfg, args.quick)
    print(report)
    Path(args.markdown).write_text(report)
    log(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
