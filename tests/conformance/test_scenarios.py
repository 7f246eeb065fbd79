"""The conformance scenarios of docs/protocol.md, for the Python client.

Each test is one numbered scenario, run against a real hub on 127.0.0.1, with a
real chaos proxy where the network must misbehave. The browser client runs the
same list in Chromium.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tether import Gap, Hub, Incoming, NackError, State
from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..conftest import RefusingServer, StartHub
from ..support import BrokenHub, Recorder, T, bad_message, eventually, hub_options
from .scenarios import scenario


def proxy_url(proxy: ChaosProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/ws"


@scenario(1)
async def test_s01_first_connect(hub_server: HubServer) -> None:
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    assert rec.state_sequence() == [State.CONNECTING, State.CONNECTED]
    assert rec.reconnects == 0
    m = rec.client.metrics
    assert m.successful_connects == 1
    # A first connect is not a reconnect: no attempt is counted against the backoff.
    assert (m.reconnect_attempts, m.total_reconnects) == (0, 0)
    await rec.close()
    assert rec.state_sequence()[-1] is State.CLOSED


@scenario(2)
async def test_s02_cut_resume_exactly_once_in_order(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    hub = hub_server.hub
    rec = Recorder(proxy_url(chaos))
    await rec.subscribed("t")
    total = 300

    async def publish() -> None:
        for n in range(total):
            await hub.publish("t", {"n": n})
            await asyncio.sleep(T / 20)

    publisher = asyncio.create_task(publish())
    cuts = 0
    while not publisher.done():
        await asyncio.sleep(3 * T)
        if rec.client.state is State.CONNECTED:
            cuts += chaos.cut() > 0
    await publisher
    await eventually(lambda: len(rec.deliveries) >= total, what="all messages")
    await eventually(lambda: rec.reconnects == cuts, what="a reconnect per cut")
    assert rec.offsets("t") == list(range(1, total + 1))
    assert [d.data["n"] for d in rec.deliveries] == list(range(total))
    assert cuts >= 3
    assert rec.reconnects == rec.client.metrics.total_reconnects >= 3
    assert rec.resyncs == []
    assert rec.client.metrics.messages_recovered > 0
    await rec.close()


@scenario(3)
async def test_s03_resume_with_zero_messages_before_the_drop(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    rec = Recorder(proxy_url(chaos))
    await rec.subscribed("t")
    assert rec.deliveries == []
    chaos.refuse()
    chaos.cut()
    await eventually(lambda: rec.client.state is State.RECONNECTING, what="reconnecting")
    for n in range(5):
        await hub_server.hub.publish("t", n)
    chaos.heal()
    await eventually(lambda: len(rec.deliveries) == 5, what="replayed messages")
    assert rec.offsets("t") == [1, 2, 3, 4, 5]
    assert all(d.recovered for d in rec.deliveries)
    assert rec.resyncs == []
    await rec.close()


@scenario(4)
async def test_s04_half_open_detected_within_deadline(start_hub: StartHub) -> None:
    server = await start_hub(heartbeat_interval=2 * T, heartbeat_timeout=2 * T)
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    rec = Recorder(proxy_url(proxy))
    await rec.subscribed("t")
    await server.hub.publish("t", "before")
    await eventually(lambda: len(rec.deliveries) == 1, what="first message")

    stalled_at = time.monotonic()
    proxy.stall()  # bytes stop flowing both ways, no FIN, no RST
    await server.hub.publish("t", "during")
    await eventually(lambda: rec.client.state is State.RECONNECTING, what="stall detected")
    detected_after = time.monotonic() - stalled_at
    deadline = 4 * T  # heartbeat_interval + heartbeat_timeout, adopted from welcome
    assert detected_after <= deadline + 2 * T, detected_after
    assert rec.client.metrics.heartbeat_failures == 1

    proxy.heal()
    await server.hub.publish("t", "after")
    await eventually(lambda: len(rec.deliveries) == 3, what="recovery")
    assert [d.data for d in rec.deliveries] == ["before", "during", "after"]
    assert rec.resyncs == []
    await rec.close()
    await proxy.stop()


@scenario(5)
async def test_s05_restart_reports_the_exact_gap(start_hub: StartHub) -> None:
    first = await start_hub()
    rec = Recorder(first.url)
    await rec.subscribed("t")
    for n in range(5):
        await first.hub.publish("t", n)
    await eventually(lambda: len(rec.deliveries) == 5, what="first epoch")
    old_epoch = rec.deliveries[0].epoch

    await first.stop()  # in-memory history dies with it
    second = await start_hub(Hub(**hub_options(port=first.port)))
    for n in range(3):
        await second.hub.publish("t", f"new-{n}")
    await eventually(lambda: len(rec.deliveries) == 8, what="new epoch delivered")

    assert rec.resyncs == [("t", [Gap(epoch=old_epoch, start=6, end=None)])]
    new = rec.deliveries[5:]
    assert [d.offset for d in new] == [1, 2, 3]
    assert len({d.epoch for d in new}) == 1 and new[0].epoch != old_epoch
    assert rec.client.metrics.resyncs == 1
    await rec.close()


@scenario(6)
async def test_s06_history_too_short_reports_evicted_range(start_hub: StartHub) -> None:
    server = await start_hub(history_size=5)
    proxy = ChaosProxy(target=("127.0.0.1", server.port))
    await proxy.start()
    rec = Recorder(proxy_url(proxy))
    await rec.subscribed("t")
    for n in range(2):
        await server.hub.publish("t", n)
    await eventually(lambda: len(rec.deliveries) == 2, what="live messages")
    epoch = rec.deliveries[0].epoch
    proxy.refuse()
    proxy.cut()
    for n in range(2, 20):
        await server.hub.publish("t", n)
    proxy.heal()
    await eventually(lambda: len(rec.deliveries) == 7, what="replay of retained history")
    assert rec.resyncs == [("t", [Gap(epoch=epoch, start=3, end=15)])]
    assert rec.offsets("t") == [1, 2, 16, 17, 18, 19, 20]
    await rec.close()
    await proxy.stop()


@scenario(7)
async def test_s07_outbox_flushed_in_order_after_reconnect(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    seen: list[Any] = []

    @hub_server.hub.on("note")
    async def note(msg: Incoming) -> int:
        seen.append(msg.data)
        return len(seen)

    rec = Recorder(proxy_url(chaos))
    await rec.subscribed("t")
    chaos.refuse()
    chaos.cut()
    await eventually(lambda: rec.client.state is State.RECONNECTING, what="offline")
    futures = [await rec.client.send("note", n, wait_ack=False) for n in range(10)]
    assert rec.client.metrics.outbox_size == 10
    chaos.heal()
    results = await asyncio.wait_for(asyncio.gather(*futures), 100 * T)
    assert seen == list(range(10))
    assert results == list(range(1, 11))
    assert rec.client.metrics.outbox_size == 0
    await rec.close()


@scenario(8)
async def test_s08_lost_ack_retry_runs_handler_once(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    runs: list[Any] = []

    @hub_server.hub.on("charge")
    async def charge(msg: Incoming) -> dict[str, Any]:
        runs.append(msg.id)
        if len(runs) == 1:
            chaos.cut()  # the connection dies before the ack can be written
            await asyncio.sleep(T)
        return {"charged": msg.data}

    rec = Recorder(proxy_url(chaos))
    await rec.subscribed("t")
    result = await asyncio.wait_for(rec.client.send("charge", 42), 100 * T)
    assert result == {"charged": 42}
    assert len(runs) == 1
    assert hub_server.hub.stats.sends_deduplicated >= 1
    assert rec.reconnects >= 1
    await rec.close()


class FixedHintHub(Hub):
    """A hub whose restart hint is fixed, so the client's wait can be checked."""

    hint_ms = int(15 * T * 1000)

    def restart_reason(self) -> str:
        return json.dumps({"retry_after_ms": self.hint_ms, "message": "server restarting"})


@scenario(9)
async def test_s09_restart_hint_is_honoured(start_hub: StartHub) -> None:
    first = await start_hub(FixedHintHub(**hub_options()))
    # A tiny backoff: if the client ignored the hint it would be back almost at once.
    rec = Recorder(first.url, backoff_base=T / 50, backoff_cap=T / 50)
    await rec.subscribed("t")
    await first.stop()
    await start_hub(Hub(**hub_options(port=first.port)))
    await eventually(lambda: rec.client.metrics.total_reconnects == 1, what="reconnect")
    times = {new: at for _, new, at in rec.states}
    waited = times[State.CONNECTED] - times[State.RECONNECTING]
    assert waited >= FixedHintHub.hint_ms / 1000 - T / 10, waited
    assert rec.client.metrics.failed_reconnects == 0
    await rec.close()


@scenario(10)
async def test_s10_circuit_breaker_probe_and_manual_reconnect(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    rec = Recorder(proxy_url(chaos), max_attempts=3, circuit_cooldown=10 * T, stable_after=T)
    await rec.subscribed("t")
    # Until it has been up for stable_after, a connection still counts as an attempt.
    await eventually(lambda: rec.client.metrics.reconnect_attempts == 0, what="stable")
    chaos.refuse()
    chaos.cut()
    await eventually(lambda: rec.client.state is State.FAILED, what="circuit open")
    m = rec.client.metrics
    assert m.is_circuit_open and m.circuit_breaker_trips == 1
    assert m.failed_reconnects == 3
    # Half-open: after the cooldown one probe runs; it fails and the circuit trips again.
    await eventually(lambda: rec.client.metrics.circuit_breaker_trips == 2, what="probe")
    # Timed by the client's own transitions (the test's polling would add its lag).
    opened_at = next(t for _, new, t in rec.states if new is State.FAILED)
    probed_at = next(t for old, _, t in rec.states if old is State.FAILED)
    assert probed_at - opened_at >= 10 * T - 0.001
    assert State.RECONNECTING in rec.state_sequence()[-2:]
    # reconnect() works at any time and does not wait for the cooldown.
    chaos.heal()
    rec.client.reconnect()
    await rec.client.wait_for(State.CONNECTED, timeout=5 * T)
    assert rec.client.metrics.reconnect_attempts == 1
    await rec.close()


@scenario(11)
async def test_s11_auth_failure_does_not_loop(refusing_server: RefusingServer) -> None:
    rec = Recorder(refusing_server.url, circuit_cooldown=1000 * T)
    await rec.client.start()
    await rec.client.wait_for(State.FAILED, timeout=50 * T)
    await asyncio.sleep(10 * T)
    assert len(refusing_server.attempts) == 1
    assert rec.client.state is State.FAILED
    assert "1008" in (rec.client.metrics.last_error or "")
    await rec.close()


@scenario(12)
async def test_s12_bad_input(hub_server: HubServer) -> None:
    bystander = Recorder(hub_server.url)
    await bystander.subscribed("t")
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    with pytest.raises(NackError) as info:
        await rec.client.send("nobody.listens", {})
    assert info.value.code == "no_handler"
    await hub_server.hub.publish("t", "still here")
    await eventually(lambda: rec.offsets("t") == [1], what="a delivery after the nack")
    await eventually(lambda: bystander.offsets("t") == [1], what="the bystander's delivery")
    assert (rec.client.state, rec.reconnects) == (State.CONNECTED, 0)
    await rec.close()
    await bystander.close()


@scenario(13)
async def test_s13_undecodable_message_is_reported_and_stepped_over(
    broken_hub: BrokenHub,
) -> None:
    # A hub that predates the payload rule (or a bug) sends what this client can't decode.
    # It used to kill the reader (UnicodeDecodeError) with the state stuck at "connected".
    broken_hub.frames = [
        bad_message(1, b'{"s":"\xff"}'),
        bad_message(2, b"[1e400]"),
        bad_message(3, b'{"ok":true}'),
    ]
    rec = Recorder(broken_hub.url)
    await rec.subscribed("t")
    await eventually(lambda: rec.offsets("t") == [3], what="the decodable message")
    assert [gap.reason for _, gaps in rec.resyncs for gap in gaps] == ["undeliverable"] * 2
    assert [(gap.start, gap.end) for _, gaps in rec.resyncs for gap in gaps] == [(1, 1), (2, 2)]
    await eventually(lambda: len(broken_hub.reports) == 2, what="both reports")
    assert [r["offset"] for r in broken_hub.reports] == [1, 2]
    assert rec.client.state is State.CONNECTED
    assert rec.reconnects == 0
    assert rec.client.cursor("t").offset == 3  # type: ignore[union-attr]
    await rec.close()


@scenario(14)
async def test_s14_rewind_replays_the_last_messages_then_resumes(
    hub_server: HubServer, chaos: ChaosProxy
) -> None:
    hub = hub_server.hub
    for n in range(1, 6):
        await hub.publish("t", n)
    rec = Recorder(proxy_url(chaos))
    await rec.client.subscribe("t", rec.on_message, rewind=3)  # offline: made on connect
    await rec.client.connect(timeout=100 * T)
    await eventually(lambda: len(rec.deliveries) == 3, what="the rewind")
    assert [(d.offset, d.data, d.recovered) for d in rec.deliveries] == [
        (3, 3, False),  # never missed: not "recovered"
        (4, 4, False),
        (5, 5, False),
    ]
    await hub.publish("t", 6)
    await eventually(lambda: len(rec.deliveries) == 4, what="live")
    chaos.cut()
    await eventually(lambda: rec.reconnects == 1, what="the reconnect")
    await hub.publish("t", 7)
    await eventually(lambda: len(rec.deliveries) == 5, what="after the cut")
    await asyncio.sleep(5 * T)  # a rewind sent again would show here as repeats
    assert rec.offsets("t") == [3, 4, 5, 6, 7]
    assert rec.deliveries[3].recovered is False and rec.resyncs == []
    await rec.close()
