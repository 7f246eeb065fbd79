"""Topic-table benchmark: a fresh topic costs the same at 100,000 topics held as at none.

Run ``python benchmarks/topics.py`` (part of ``make bench``; about 1 minute), or
``--quick``. The method and the latest results are in ``docs/benchmarks.md``.

Two processes on two cores:

* the **hub** (``--role server``, a subprocess pinned to CPU 0): a real ``tether serve``
  hub (``HubServer``) whose table is pre-filled with ``--held`` topics, every one in use
  (``broker.retain``, exactly what a topic's first subscriber does), so a new topic must
  evict the one idle topic or be created beside them; plus a publisher task sending
  timestamped messages to a ``bystander`` topic at 100 msgs/s. It reports its CPU time.
* the **clients** (this process, CPU 1): real WebSocket clients (``websockets``).

Part A, *cost of a fresh topic*: one client subscribes to and unsubscribes from
``FRESH`` new topics, one round trip at a time; server CPU per fresh topic and the
round trip's p50/p99/max, at 0 topics held (the baseline) and at 100,000. The
inbound rate limit is lifted for this part only (it measures the hub, not admission).

Part B, *a bystander while others churn*: a subscriber of ``bystander`` records each
message's publish-to-receive latency for ``--seconds``, first alone (the baseline),
then while 4 clients create topics as fast as the default ``inbound_rate`` lets them
(subscribe + unsubscribe of fresh names), with 100,000 topics held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER_CPU = 0
CLIENT_CPU = 1
HELD = 100_000
FRESH = 2_000
CHURNERS = 4
PUBLISH_RATE = 100.0
ROUNDS = 3  # part A runs per table size; the median is reported


def pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the hub (subprocess) -------------------------------------------------------------------


async def server_main(held: int, inbound_rate: float) -> None:
    from tether import Hub
    from tether.server.broker import MemoryBroker
    from tether.server.serve import HubServer

    pin(SERVER_CPU)
    hub = Hub(
        port=0,
        max_topics=HELD,
        heartbeat_interval=3600.0,
        heartbeat_timeout=3600.0,
        inbound_rate=inbound_rate,
        inbound_burst=max(100, int(inbound_rate)),
    )
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    for n in range(held - 1 if held else 0):  # one slot left idle: creation must evict
        broker.log(f"held.{n}")
        broker.retain(f"held.{n}")
    if held:
        broker.log("held.idle")
    server = HubServer(hub)
    await server.start()

    async def publish() -> None:
        while True:
            hub.publish_nowait("bystander", {"t0": time.time()})
            await asyncio.sleep(1 / PUBLISH_RATE)

    task = asyncio.create_task(publish())
    print(json.dumps({"port": server.port, "topics": len(hub.broker)}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "cpu":
            print(json.dumps({"cpu": time.process_time(), "topics": len(hub.broker)}), flush=True)
        else:
            break
    task.cancel()
    await server.stop()


class Server:
    def __init__(self, *, held: int, inbound_rate: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--role",
                "server",
                "--held",
                str(held),
                "--inbound-rate",
                str(inbound_rate),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        self.url = f"ws://127.0.0.1:{ready['port']}/ws"
        self.topics = ready["topics"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("hub subprocess exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def cpu(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("cpu\n")
        self.proc.stdin.flush()
        value: float = self._read()["cpu"]
        return value

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the clients (this process) -------------------------------------------------------------


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}

    def q(x: float) -> float:
        return ordered[min(len(ordered) - 1, int(x * len(ordered)))]

    return {"p50": q(0.50), "p99": q(0.99), "max": ordered[-1], "n": len(ordered)}


async def recv_type(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] == kind:
            return frame
        if frame["type"] == "error":
            raise RuntimeError(f"hub refused: {frame}")


async def fresh_topic_cost(held: int, fresh: int) -> dict[str, Any]:
    import websockets

    server = Server(held=held, inbound_rate=1_000_000.0)
    try:
        async with websockets.connect(server.url, compression=None, max_size=2**22) as ws:
            await recv_type(ws, "welcome")
            rtts: list[float] = []
            cpu0, own0 = server.cpu(), cpu_seconds()
            for n in range(fresh):
                t0 = time.perf_counter()
                await ws.send(json.dumps({"type": "subscribe", "topic": f"fresh.{n}"}))
                await recv_type(ws, "subscribed")
                rtts.append(time.perf_counter() - t0)
                await ws.send(json.dumps({"type": "unsubscribe", "topic": f"fresh.{n}"}))
                await recv_type(ws, "unsubscribed")
            cpu1, own1 = server.cpu(), cpu_seconds()
        return {
            "held": server.topics,
            "server_us_per_topic": (cpu1 - cpu0) / fresh * 1e6,
            "client_cpu_s": own1 - own0,
            "rtt": quantiles(rtts),
        }
    finally:
        server.stop()


async def churn(url: str, name: str, stop: asyncio.Event, counts: list[int]) -> None:
    """Create fresh topics as fast as the default inbound rate allows (50 frames/s)."""
    import websockets

    async with websockets.connect(url, compression=None) as ws:
        await recv_type(ws, "welcome")
        n = 0
        while not stop.is_set():
            topic = f"{name}.{n}"
            await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
            await ws.send(json.dumps({"type": "unsubscribe", "topic": topic}))
            n += 1
            counts.append(1)
            await asyncio.sleep(2 / 50)  # two frames per topic at 50 frames/s


async def bystander(held: int, seconds: float, churners: int) -> dict[str, Any]:
    import websockets

    server = Server(held=held, inbound_rate=50.0)  # the default inbound_rate
    stop = asyncio.Event()
    created: list[int] = []
    try:
        async with websockets.connect(server.url, compression=None) as ws:
            await recv_type(ws, "welcome")
            await ws.send(json.dumps({"type": "subscribe", "topic": "bystander"}))
            await recv_type(ws, "subscribed")
            # (receive time, latency) of every message, read from the start so nothing
            # waits in the socket while the others warm up.
            samples: list[tuple[float, float]] = []

            async def read() -> None:
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame["type"] == "message":
                        now = time.time()
                        samples.append((now, now - frame["data"]["t0"]))

            reader = asyncio.create_task(read())
            tasks = [
                asyncio.create_task(churn(server.url, f"churn{i}", stop, created))
                for i in range(churners)
            ]
            await asyncio.sleep(1.0)  # warm up
            cpu0, own0 = server.cpu(), cpu_seconds()
            created.clear()
            start = time.time()
            await asyncio.sleep(seconds)
            end = time.time()
            cpu1, own1 = server.cpu(), cpu_seconds()
            stop.set()
            await asyncio.gather(*tasks)
            reader.cancel()
            latencies = [lat for at, lat in samples if start <= at <= end]
        return {
            "held": server.topics,
            "churners": churners,
            "topics_per_s": len(created) / seconds,
            "server_cpu_pct": (cpu1 - cpu0) / seconds * 100,
            "client_cpu_pct": (own1 - own0) / seconds * 100,
            "latency": quantiles(latencies),
        }
    finally:
        server.stop()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median server CPU per topic (its round trips come with it)."""
    ordered = sorted(runs, key=lambda r: r["server_us_per_topic"])
    return ordered[len(ordered) // 2]


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def render(a0: dict[str, Any], a1: dict[str, Any], b0: dict[str, Any], b1: dict[str, Any]) -> str:
    lines = [
        "### Topic table: fresh topics at 0 and 100,000 topics held",
        "",
        f"Part A: {FRESH} fresh topics, one subscribe + unsubscribe round trip at a time "
        f"(median of {ROUNDS} alternated runs per table size).",
        "",
        "| topics held | server CPU per fresh topic | round trip p50 / p99 / max (ms) "
        "| client CPU |",
        "|---|---|---|---|",
    ]
    for a in (a0, a1):
        r = a["rtt"]
        lines.append(
            f"| {a['held']:,} | {a['server_us_per_topic']:.0f} µs | "
            f"{ms(r['p50'])} / {ms(r['p99'])} / {ms(r['max'])} | {a['client_cpu_s']:.2f} s |"
        )
    lines += [
        "",
        f"Ratio (100,000 held / none): server CPU per topic "
        f"{a1['server_us_per_topic'] / a0['server_us_per_topic']:.2f}x, round-trip p99 "
        f"{a1['rtt']['p99'] / a0['rtt']['p99']:.2f}x.",
        "",
        f"Part B: a bystander's publish-to-receive latency ({PUBLISH_RATE:.0f} msgs/s), alone "
        f"and while {CHURNERS} clients create topics at the default inbound rate.",
        "",
        "| topics held | churning clients | fresh topics/s | latency p50 / p99 / max (ms) "
        "| hub CPU | client CPU |",
        "|---|---|---|---|---|---|",
    ]
    for b in (b0, b1):
        lat = b["latency"]
        lines.append(
            f"| {b['held']:,} | {b['churners']} | {b['topics_per_s']:.0f} | "
            f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])} | "
            f"{b['server_cpu_pct']:.1f} % | {b['client_cpu_pct']:.1f} % |"
        )
    lines += [
        "",
        f"Ratio (churning at 100,000 held / alone): bystander p99 "
        f"{b1['latency']['p99'] / b0['latency']['p99']:.2f}x, max "
        f"{b1['latency']['max'] / b0['latency']['max']:.2f}x.",
        "",
    ]
    return "\n".join(lines)


async def run(quick: bool) -> str:
    fresh = 300 if quick else FRESH
    seconds = 3.0 if quick else 10.0
    runs: dict[int, list[dict[str, Any]]] = {0: [], HELD: []}
    for round_ in range(1 if quick else ROUNDS):
        for held in (0, HELD):  # alternated, so drift on a shared machine hits both alike
            print(f"part A, round {round_ + 1}: fresh topics, {held:,} held", file=sys.stderr)
            runs[held].append(await fresh_topic_cost(held, fresh))
    a0, a1 = (median_run(runs[held]) for held in (0, HELD))
    print("part B: bystander alone", file=sys.stderr)
    b0 = await bystander(HELD, seconds, 0)
    print("part B: bystander with churning clients", file=sys.stderr)
    b1 = await bystander(HELD, seconds, CHURNERS)
    return render(a0, a1, b0, b1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer topics, shorter windows")
    parser.add_argument("--markdown", default="benchmarks/topics-results.md", type=Path)
    parser.add_argument("--role", choices=["server"], help=argparse.SUPPRESS)
    parser.add_argument("--held", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inbound-rate", type=float, default=50.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(server_main(args.held, args.inbound_rate))
        return
    pin(CLIENT_CPU)
    report = asyncio.run(run(args.quick))
    print(report)
    args.markdown.write_text(report)


if __name__ == "__main__":
    main()
