"""Hostile input at a live hub: arbitrary frames never crash it or disturb others.

The hub runs on its own event loop in a thread so Hypothesis can drive a plain
synchronous WebSocket client at it, example after example.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from ..support import ThreadedHub
from .answers import SENTINEL, check_answer


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadedHub]:
    # Each example opens a connection: lift the per-address handshake limiter (tested elsewhere).
    hub = ThreadedHub(max_frame_bytes=65_536, handshake_rate=10_000, handshake_burst=10_000)
    yield hub
    hub.stop()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
frame_types = st.sampled_from(
    ["subscribe", "unsubscribe", "send", "publish", "auth", "ping", "pong", "bogus", ""]
)
structured = st.builds(
    lambda t, fields: json.dumps({"type": t, **fields}),
    frame_types,
    st.dictionaries(
        st.sampled_from(["topic", "id", "event", "data", "resume", "token", "ts"]),
        json_values,
        max_size=5,
    ),
)
nasty = st.sampled_from(
    [
        "[" * 5000 + "]" * 5000,
        '{"type":"publish","id":"x","topic":"t","data":' + "[" * 3000 + "]" * 3000 + "}",
        '{"type":"ping","ts":' + "9" * 5000 + "}",
        '{"type":"subscribe","topic":"' + "a" * 60_000 + '"}',
        '{"type":"send","id":"' + "i" * 100 + '","event":"e"}',
        "\ud800" if False else "\u0000\u0001\u0002",
        "{" * 10,
        "",
    ]
)
frames = st.one_of(
    structured,
    nasty,
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
)


def drain_until_pong(ws: ClientConnection) -> None:
    while not check_answer(json.loads(ws.recv(timeout=10))):
        pass


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(frames, min_size=1, max_size=12))
def test_arbitrary_frames_get_answers_and_never_break_the_hub(
    live: ThreadedHub, batch: list[str | bytes]
) -> None:
    with connect(live.server.url, max_size=2**22) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        for frame in batch:
            ws.send(frame)
        ws.send(json.dumps({"type": "ping", "ts": SENTINEL}))
        drain_until_pong(ws)  # still open, still answering, in order


def test_bystander_unaffected_and_hub_clean_after_fuzzing(live: ThreadedHub) -> None:
    with connect(live.server.url) as bystander:
        bystander.recv(timeout=10)
        bystander.send(json.dumps({"type": "subscribe", "topic": "after-fuzz"}))
        assert json.loads(bystander.recv(timeout=10))["type"] == "subscribed"
        # Garbage from another connection, interleaved.
        with connect(live.server.url) as attacker:
            attacker.recv(timeout=10)
            for _ in range(200):
                attacker.send("{not json")
                attacker.send(b"\x00binary")
            live.call(live.server.hub.publish("after-fuzz", "ok"))
            message = json.loads(bystander.recv(timeout=10))
            assert message["type"] == "message" and message["data"] == "ok"

    # Every fuzz connection was released.
    async def count() -> int:
        for _ in range(100):
            if live.server.hub.connection_count == 0:
                break
            await asyncio.sleep(0.02)
        return live.server.hub.connection_count

    assert live.call(count()) == 0


def test_oversize_frame_closes_1009_only_that_connection(live: ThreadedHub) -> None:
    with connect(live.server.url) as ws:
        ws.recv(timeout=10)
        ws.send("x" * 70_000)
        with pytest.raises(Exception):  # noqa: B017 - websockets raises ConnectionClosed
            ws.recv(timeout=10)
        assert ws.close_code == 1009
    with connect(live.server.url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
