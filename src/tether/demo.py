"""``tether demo``: a live feed, a resilient client, and chaos you can trigger.

A hub publishes three simulated feeds (odds updates, a scrape job's progress,
live metrics). A client subscribes to them through a :class:`ChaosProxy`, so
the connection can be cut or stalled like a real network, and the hub itself
can be restarted. Once a second the demo prints the client's state and, per
topic, published / delivered / recovered / gaps: after every cut and stall the
delivered count catches up with no gap; a restart (in-memory history) shows
its gap honestly.

Keys (then Enter): ``c`` cut, ``s`` stall (half-open), ``r`` restart the hub,
``q`` quit. Without a terminal it runs an automatic chaos schedule.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

from .chaos import ChaosProxy
from .client import Client, Delivery, State
from .protocol import Gap
from .server import Hub
from .server.serve import HubServer

TOPICS = ("odds", "scrape", "metrics")


@dataclass
class TopicCount:
    published: int = 0
    delivered: int = 0
    recovered: int = 0
    gaps: int = 0
    unknown_gaps: int = 0
    seen: set[tuple[str, int]] = field(default_factory=set)


class Demo:
    def __init__(self, *, port: int) -> None:
        self.port = port
        self.counts = {t: TopicCount() for t in TOPICS}
        self.events: list[str] = []
        self.hub: Hub | None = None
        self.server: HubServer | None = None
        self.proxy = ChaosProxy(target=("127.0.0.1", port))
        self.client: Client | None = None

    def log(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(f"  * {text}", flush=True)

    async def start_hub(self) -> None:
        # Short heartbeats so a stalled link is noticed within seconds in the demo.
        self.hub = Hub(
            port=self.port, heartbeat_interval=2.0, heartbeat_timeout=2.0, restart_spread=2.0
        )
        self.server = HubServer(self.hub)
        await self.server.start()

    async def restart_hub(self) -> None:
        self.log("restarting the hub (in-memory history is lost: expect a reported gap)")
        if self.server is not None:
            await self.server.stop()
        await asyncio.sleep(0.5)
        await self.start_hub()

    async def feed(self) -> None:
        rng = random.Random()
        price = 2.10
        progress = 0
        while True:
            await asyncio.sleep(0.2)
            hub = self.hub
            if hub is None or hub.closing:
                continue
            price = max(1.01, price + rng.uniform(-0.05, 0.05))
            await hub.publish("odds", {"match": "ARS-CHE", "home": round(price, 2)})
            self.counts["odds"].published += 1
            if rng.random() < 0.5:
                progress = (progress + rng.randint(1, 7)) % 101
                await hub.publish("scrape", {"job": "bookmakers", "progress": progress})
                self.counts["scrape"].published += 1
            if rng.random() < 0.25:
                await hub.publish("metrics", {"cpu": round(rng.uniform(5, 95), 1)})
                self.counts["metrics"].published += 1

    def on_message(self, msg: Delivery) -> None:
        count = self.counts[msg.topic]
        key = (msg.epoch, msg.offset)
        if key in count.seen:
            self.log(f"DUPLICATE {msg.topic} #{msg.offset}")  # never expected
        count.seen.add(key)
        count.delivered += 1
        if msg.recovered:
            count.recovered += 1

    def on_resync(self, topic: str, missing: list[Gap]) -> None:
        for gap in missing:
            if gap.end is None:
                self.counts[topic].unknown_gaps += 1
            else:
                self.counts[topic].gaps += gap.end - gap.start + 1
        self.log(f"resync {topic}: missing {[(g.epoch, g.start, g.end) for g in missing]}")

    def status(self) -> str:
        assert self.client is not None
        m = self.client.metrics
        parts = [f"[{m.state.value:>12}]"]
        for topic, c in self.counts.items():
            parts.append(
                f"{topic}: pub {c.published} / got {c.delivered} / rec {c.recovered}"
                f" / gaps {c.gaps}{'+?' if c.unknown_gaps else ''}"
            )
        if m.state is not State.CONNECTED and m.next_retry_in is not None:
            parts.append(f"retry in {m.next_retry_in:.1f}s")
        return "  ".join(parts)

    async def keys(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = line.strip().lower()
            if cmd == "c":
                self.log(f"cut {self.proxy.cut()} connection(s)")
            elif cmd == "s":
                self.log(f"stalled {self.proxy.stall()} connection(s) for 5 s (half-open)")
                await asyncio.sleep(5)
                self.proxy.heal()
            elif cmd == "r":
                await self.restart_hub()
            elif cmd == "q":
                return

    async def auto_chaos(self) -> None:
        step = 0
        while True:
            await asyncio.sleep(8)
            step += 1
            if step % 3 == 0:
                self.log(f"auto: stall {self.proxy.stall()} connection(s) for 5 s")
                await asyncio.sleep(5)
                self.proxy.heal()
            else:
                self.log(f"auto: cut {self.proxy.cut()} connection(s)")


async def run_demo(*, port: int = 8765, duration: float = 0) -> int:
    demo = Demo(port=port)
    await demo.start_hub()
    await demo.proxy.start()
    demo.client = Client(
        f"ws://127.0.0.1:{demo.proxy.port}/ws",
        on_state_change=lambda old, new: demo.log(f"state {old.value} -> {new.value}"),
        on_resync=demo.on_resync,
        backoff_base=0.5,
        backoff_cap=4.0,
    )
    for topic in TOPICS:
        await demo.client.subscribe(topic, demo.on_message)
    await demo.client.start()
    interactive = sys.stdin.isatty()
    print(
        f"tether demo: hub ws://127.0.0.1:{port}/ws, client via chaos proxy :{demo.proxy.port}\n"
        + (
            "keys: c=cut s=stall r=restart q=quit (then Enter)"
            if interactive
            else "no terminal: automatic chaos every 8 s"
        ),
        flush=True,
    )
    tasks = [asyncio.create_task(demo.feed())]
    tasks.append(asyncio.create_task(demo.keys() if interactive else demo.auto_chaos()))
    start = time.monotonic()
    try:
        while True:
            await asyncio.sleep(1)
            print(demo.status(), flush=True)
            if duration and time.monotonic() - start >= duration:
                break
            if interactive and tasks[1].done():
                break
    finally:
        for task in tasks:
            task.cancel()
        await demo.client.close()
        await demo.proxy.stop()
        if demo.server is not None:
            await demo.server.stop()
    duplicates = sum(1 for e in demo.events if "DUPLICATE" in e)
    return 1 if duplicates else 0
