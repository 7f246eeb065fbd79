"""Poison input (issue 13): no published message can silence, loop or split the clients.

Every entry point refuses what not every client can decode, before it gets an
offset; a client that meets an undecodable message anyway (an older or broken
hub) reports that offset and goes on; a bug inside a client or the hub fails one
connection loudly and it resumes, instead of leaving a dead task behind a
``connected`` state. (How both clients step over an undecodable message is
conformance scenario 13.)
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest
import websockets

from tether import Client, Hub, State
from tether.payload import InvalidPayload
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import Recorder, T, client_options, eventually, post_publish

# Bodies of POST /publish, as bytes, that no client could take as they are.
POISON = [
    b'{"topic":"t","data":{"s":"\xff"}}',  # issue 13.1: invalid UTF-8 inside data
    b'{"topic":"t","data":[1e400]}',  # issue 13.2
    b'{"topic":"t","data":[' + b"9" * 5000 + b"]}",  # issue 13.2
    b'{"topic":"t","data":9007199254740993}',
    b'{"topic":"t","data":"\\ud800"}',
    b'{"topic":"t","data":' + b"[" * 40 + b"]" * 40 + b"}",
]


async def metric(hub_server: HubServer, name: str) -> float:
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_poison_over_http_is_refused_and_subscribers_keep_receiving(
    hub_server: HubServer,
) -> None:
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    await hub_server.hub.publish("t", {"n": 1})
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        for body in POISON:
            reply = await post_publish(http, body)
            assert reply.status_code == 400, (body[:40], reply.text)
            assert reply.json()["code"] == "invalid_payload"
            assert reply.json()["message"]
        assert (await http.post("/publish", json={"topic": "t", "data": {"n": 2}})).json()[
            "offset"
        ] == 2  # nothing refused got an offset
    await eventually(lambda: rec.offsets("t") == [1, 2], what="both good messages")
    assert rec.client.state is State.CONNECTED
    assert rec.resyncs == []
    assert await metric(hub_server, "tether_payloads_refused_total") == len(POISON)
    await rec.close()


async def test_poison_over_websocket_is_nacked(hub_server: HubServer) -> None:
    async with websockets.connect(hub_server.url) as ws:
        await ws.recv()  # welcome
        for n, body in enumerate(POISON):
            data = body[len(b'{"topic":"t","data":') : -1]
            await ws.send(
                b'{"type":"publish","id":"p'
                + str(n).encode()
                + b'","topic":"t","data":'
                + data
                + b"}",
                text=True,
            )
            answer = json.loads(await ws.recv())
            assert answer["type"] == "nack" and answer["code"] == "invalid_payload", answer
            assert answer["id"] == f"p{n}"
        assert (await hub_server.hub.topic_head("t")).offset == 0


async def test_poison_in_process_raises_value_error(hub_server: HubServer) -> None:
    hub = hub_server.hub
    for value in (math.inf, {"x": [math.nan]}, 2**60, "\ud800", _deep(40)):
        with pytest.raises(ValueError) as info:
            await hub.publish("t", value)
        assert isinstance(info.value, InvalidPayload)
    assert (await hub.topic_head("t")).offset == 0
    # The Python client refuses the same values before they reach its outbox.
    client = Client(hub_server.url, **client_options())
    with pytest.raises(InvalidPayload):
        await client.publish("t", {"px": math.inf})
    await client.close()


def _deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


async def test_hub_counts_undeliverable_reports(hub_server: HubServer) -> None:
    async with websockets.connect(hub_server.url) as ws:
        await ws.recv()
        await ws.send(
            json.dumps(
                {"type": "undeliverable", "topic": "t", "epoch": "E", "offset": 4, "reason": "x"}
            )
        )
        await ws.send(json.dumps({"type": "ping", "ts": 1}))
        assert json.loads(await ws.recv())["type"] == "pong"  # no error frame before it
    assert hub_server.hub.stats.undeliverable == 1
    assert await metric(hub_server, "tether_undeliverable_total") == 1


# --- supervision: a bug fails one connection loudly, never leaves a dead task -------------


async def test_a_crash_in_the_client_reader_fails_the_connection_and_it_resumes(
    hub_server: HubServer,
) -> None:
    errors: list[tuple[str, str]] = []

    async def on_error(code: str, message: str) -> None:  # async: issue 10.7
        errors.append((code, message))

    rec = Recorder(hub_server.url)
    rec.client.on_error = on_error
    await rec.subscribed("t")
    session = rec.client._session
    real_receive = session.receive
    crashes = 1

    def receive_once_broken(data: str | bytes, *, now: float) -> Any:
        nonlocal crashes
        if crashes and b'"message"' in (data if isinstance(data, bytes) else data.encode()):
            crashes -= 1
            raise RuntimeError("injected bug")
        return real_receive(data, now=now)

    session.receive = receive_once_broken  # type: ignore[method-assign]
    for n in range(1, 6):
        await hub_server.hub.publish("t", n)
    await eventually(lambda: rec.offsets("t") == [1, 2, 3, 4, 5], what="every offset once")
    assert errors and errors[0][0] == "client_error"
    assert rec.reconnects == 1
    assert rec.client.state is State.CONNECTED
    await rec.close()  # does not re-raise the injected error


async def test_a_crash_in_the_client_heartbeat_fails_the_connection(
    hub_server: HubServer,
) -> None:
    rec = Recorder(hub_server.url)
    await rec.subscribed("t")
    session = rec.client._session
    real_poll = session.poll
    crashes = 1

    def poll_once_broken(*, now: float) -> Any:
        nonlocal crashes
        if crashes:
            crashes -= 1
            raise RuntimeError("injected bug")
        return real_poll(now=now)

    session.poll = poll_once_broken  # type: ignore[method-assign]
    rec.client.reconnect()  # a new connection starts a heartbeat task, which crashes
    await eventually(lambda: rec.reconnects == 2, what="the crashed connection replaced")
    await hub_server.hub.publish("t", 1)
    await eventually(lambda: rec.offsets("t") == [1], what="delivery after the crash")
    assert rec.client.metrics.last_error is not None
    await rec.close()


async def test_a_crash_in_the_hub_liveness_check_cuts_one_link_and_checks_go_on(
    start_hub: StartHub,
) -> None:
    hub = Hub(
        port=0,
        heartbeat_interval=2 * T,
        heartbeat_timeout=2 * T,
        insecure_dev=True,
        allowed_origins="*",
    )
    server = await start_hub(hub)
    victim = Recorder(server.url)
    bystander = Recorder(server.url)
    await victim.subscribed("t")
    await bystander.subscribed("t")
    victim_session = next(link.session.id for link in hub._links)
    real_check = hub._check_liveness
    crashes = 1

    def check_once_broken(link: Any, *, now: float) -> None:
        nonlocal crashes
        if crashes and link.session.id == victim_session:
            crashes -= 1
            raise RuntimeError("injected bug")
        real_check(link, now=now)

    hub._check_liveness = check_once_broken  # type: ignore[method-assign]
    await eventually(lambda: hub.stats.internal_errors == 1, what="the crash counted")
    await eventually(lambda: victim.reconnects == 1, what="the victim resumed")
    # The loop still runs: a silent raw connection is still found dead.
    async with websockets.connect(server.url) as silent:
        await silent.recv()
        await eventually(lambda: hub.stats.heartbeat_timeouts >= 1, what="heartbeat still on")
    assert bystander.reconnects == 0
    await hub.publish("t", "after")
    await eventually(lambda: bystander.offsets("t") == [1], what="bystander delivery")
    await victim.close()
    await bystander.close()


async def test_the_hub_heartbeat_loop_is_restarted_if_it_crashes(hub_server: HubServer) -> None:
    hub = hub_server.hub
    real_loop = hub._heartbeat_loop
    crashes = 1

    async def loop_once_broken() -> None:
        nonlocal crashes
        if crashes:
            crashes -= 1
            await asyncio.sleep(0)
            raise RuntimeError("injected bug")
        await real_loop()

    hub._heartbeat_loop = loop_once_broken  # type: ignore[method-assign]
    async with websockets.connect(hub_server.url) as silent:
        await silent.recv()
        await eventually(lambda: hub.stats.internal_errors == 1, what="the crash counted")
        await eventually(lambda: hub.stats.heartbeat_timeouts == 1, what="liveness still checked")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type":"subscribe","topic":42}', "invalid_frame"),
        ('{"type":"explode"}', "invalid_frame"),
        (b"\x00\x01binary", "binary_frame"),
    ],
)
async def test_a_malformed_frame_gets_an_error_and_changes_nothing(
    hub_server: HubServer, frame: str | bytes, code: str
) -> None:
    # The hub's side of conformance scenario 12 (bad-input): any client, not only ours.
    bystander = Recorder(hub_server.url)
    await bystander.subscribed("t")
    async with websockets.connect(hub_server.url) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        await ws.send(frame)
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == code and error["message"]
        # The connection is still usable afterwards.
        await ws.send('{"type":"ping","ts":1}')
        assert json.loads(await ws.recv()) == {"type": "pong", "ts": 1}
    await hub_server.hub.publish("t", "still here")
    await eventually(lambda: len(bystander.deliveries) == 1, what="bystander delivery")
    await bystander.close()
