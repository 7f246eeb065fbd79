"""Hostile published payloads through every entry point, received by both official clients.

Hypothesis generates payloads (invalid UTF-8, lone surrogates, huge and tiny
numbers, deep nesting, big keys) and publishes each over HTTP, over a WebSocket
``publish`` or in process. Each one is either refused at the door (400 / nack /
``ValueError``, with no offset) or delivered identically to the Python client and
to the browser client in real Chromium; both keep receiving every later message
with no gap, no resync and no reconnect.

Everything runs on one event loop in a thread (``ThreadedHub``) so that
Hypothesis can drive it example after example.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.async_api import Page, async_playwright

from tether import State
from tether.payload import MAX_SAFE_INTEGER, InvalidPayload
from tether.server.serve import HubServer

from ..support import Recorder, ThreadedHub, eventually, post_publish
from ..test_payload import documents
from .conftest import CHROMIUM, CHROMIUM_ARGS, BrowserClient

TOPIC = "poison"
_ids = itertools.count()


class Rig:
    """The hub, a Python subscriber, a browser subscriber and a raw WebSocket publisher."""

    def __init__(self) -> None:
        # Production heartbeats: the raw publisher connection does not answer pings.
        self.live = ThreadedHub(heartbeat_interval=25.0, heartbeat_timeout=20.0)
        self.hub = self.live.server.hub
        self.recorder = Recorder(self.live.server.url)
        self.page: Page | None = None
        self._browser: Any = None
        self._playwright: Any = None
        self._ws: Any = None
        self.http = httpx.AsyncClient(base_url=self.live.server.http_url)
        self.live.call(self._start(), timeout=60)

    async def _start(self) -> None:
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        self.page = await self._browser.new_page()
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        await self.page.goto(self.live.server.http_url + "/healthz")
        await self.page.evaluate(
            """async (url) => {
                const t = await import('/tether.js');
                window.got = [];
                window.resyncs = [];
                window.client = t.connect(url, {
                    persistCursors: false,
                    onResync: (topic, missing) => window.resyncs.push(missing),
                });
                window.client.subscribe('poison', (m) =>
                    window.got.push([m.offset, JSON.stringify(m.data)]));
            }""",
            self.live.server.url,
        )
        await eventually(
            lambda: self.page.evaluate("() => window.client.isLive('poison')"),  # type: ignore[union-attr]
            what="browser subscribed",
        )
        await self.recorder.subscribed(TOPIC)
        self._ws = await websockets.connect(self.live.server.url)
        await self._ws.recv()  # welcome

    async def publish_http(self, raw: bytes) -> int | None:
        body = b'{"topic":"' + TOPIC.encode() + b'","data":' + raw + b"}"
        reply = await post_publish(self.http, body)
        if reply.status_code == 200:
            offset: int = reply.json()["offset"]
            return offset
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] in ("invalid_payload", "invalid_json"), reply.text
        return None

    async def publish_ws(self, raw: bytes) -> int | None:
        id = f"p{next(_ids)}"
        frame = b'{"type":"publish","id":"' + id.encode() + b'","topic":"poison","data":'
        await self._ws.send(frame + raw + b"}", text=True)
        while True:
            answer = json.loads(await self._ws.recv())
            if answer["type"] in ("ack", "nack", "error"):
                break
        if answer["type"] == "ack":
            offset: int = answer["result"]["offset"]
            return offset
        # Refused, and named: a nack for this id (an error frame only for unreadable JSON).
        assert (answer["type"] == "nack" and answer["id"] == id) or answer["type"] == "error", (
            answer
        )
        assert answer["code"] in ("invalid_payload", "invalid_json", "invalid_frame"), answer
        return None

    async def publish_value(self, value: Any) -> int | None:
        try:
            return await self.hub.publish(TOPIC, value)
        except InvalidPayload:
            return None

    async def received(self, through: int) -> tuple[dict[int, Any], dict[int, Any]]:
        """What each client delivered, by offset, once both reached ``through``."""
        page = self.page
        assert page is not None
        await eventually(
            lambda: (
                bool(self.recorder.offsets(TOPIC)) and self.recorder.offsets(TOPIC)[-1] >= through
            ),
            what="python client caught up",
        )

        async def browser_caught_up() -> bool:
            last: int = await page.evaluate("() => window.got.length ? window.got.at(-1)[0] : 0")
            return last >= through

        await eventually(browser_caught_up, what="browser client caught up")
        python = {d.offset: d.data for d in self.recorder.deliveries}
        browser = {
            o: json.loads(text, parse_int=_js_number)
            for o, text in await page.evaluate("() => window.got")
        }
        assert await page.evaluate("() => window.resyncs") == []
        assert await page.evaluate("() => window.client.state") == "connected"
        return python, browser

    def stop(self) -> None:
        async def stop() -> None:
            await self.recorder.close()
            await self._ws.close()
            await self.http.aclose()
            await self._browser.close()
            await self._playwright.stop()

        self.live.call(stop(), timeout=30)
        self.live.stop()


def _js_number(text: str) -> int | float:
    """An integer as JavaScript wrote it: every JS number is a double, so past 2**53
    ``JSON.stringify`` prints the double's shortest digits, not an exact integer."""
    value = int(text)
    return value if abs(value) <= MAX_SAFE_INTEGER else float(text)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.stop()
    assert rig.page_errors == []


python_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**53 - 1, 2**53, -(2**53), math.inf, -math.inf, math.nan, 5e-324])
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["\ud800", "a\udfffb", "\U0001f600", "\u2028"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=300), inner, max_size=3)
    ),
    max_leaves=10,
)
entries = st.one_of(
    st.tuples(st.just("http"), documents),
    st.tuples(st.just("ws"), documents),
    st.tuples(st.just("value"), python_values),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(entries, min_size=5, max_size=20))
def test_every_payload_is_refused_or_delivered_identically_to_both_clients(
    rig: Rig, batch: list[tuple[str, Any]]
) -> None:
    accepted: dict[int, Any] = {}

    async def run() -> tuple[dict[int, Any], dict[int, Any], int]:
        for entry, payload in batch:
            if entry == "value":
                offset = await rig.publish_value(payload)
                if offset is not None:
                    accepted[offset] = json.loads(msgspec.json.encode(payload))
                continue
            offset = await (rig.publish_http if entry == "http" else rig.publish_ws)(payload)
            if offset is not None:
                accepted[offset] = json.loads(payload)
        marker = await rig.hub.publish(TOPIC, {"marker": True})
        python, browser = await rig.received(marker)
        return python, browser, marker

    python, browser, marker = rig.live.call(run(), timeout=120)
    for offset, expected in accepted.items():
        assert python[offset] == expected, offset
        assert browser[offset] == expected, offset
    # No gap, nothing twice: both clients hold every offset up to the marker.
    assert sorted(python) == list(range(1, marker + 1))
    assert sorted(browser) == list(range(1, marker + 1))
    assert rig.recorder.resyncs == []
    assert rig.recorder.client.state is State.CONNECTED
    assert rig.recorder.reconnects == 0


async def test_a_crash_in_the_browser_reader_fails_the_connection_and_it_resumes(
    page: Page, hub_server: HubServer
) -> None:
    # The twin of the Python client's supervision test: a bug while handling a frame is
    # reported (onError "client_error", an async callback), the connection is failed and
    # resumed, nothing is lost.
    client = BrowserClient(page)
    await client.start(hub_server.url, persistCursors=False, backoffBase=0.05)
    await client.subscribe("t")
    await eventually(lambda: client.is_live("t"), what="live")
    await page.evaluate(
        """() => {
            const session = window.client._session;
            const real = session.receive.bind(session);
            let crashes = 1;
            session.receive = (text, now) => {
                if (crashes && text.includes('"message"')) {
                    crashes -= 1;
                    throw new Error('injected');
                }
                return real(text, now);
            };
        }"""
    )
    for n in range(1, 6):
        await hub_server.hub.publish("t", n)

    async def all_five() -> bool:
        return len(await client.offsets("t")) == 5

    await eventually(all_five, what="every offset once")
    assert await client.offsets("t") == [1, 2, 3, 4, 5]
    assert (await client.rec())["errors"] == ["client_error"]
    metrics = await client.metrics()
    assert metrics["state"] == "connected" and metrics["totalReconnects"] == 1
