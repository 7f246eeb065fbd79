"""The fallback transport over real HTTP: server-sent events down, POST up.

Same sessions, frames and rules as the WebSocket path (docs/protocol.md, Fallback
transport); here as any HTTP client sees them. The browser client's use of it (and
its switching back to WebSocket) is tested in Chromium, tests/browser/test_fallback.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import T, post_publish

SECRET = "sse-test-secret-of-at-least-32-bytes!"


@dataclass
class Event:
    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None

    @property
    def frame(self) -> Any:
        return json.loads("\n".join(self.data))


class Stream:
    """An SSE reader over one httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.retry: int | None = None
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.last_id: str | None = None

    async def next(self, timeout: float = 50 * T) -> Event:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event:
        event = Event()
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    if event.id is not None:
                        self.last_id = event.id
                    return event
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
                continue
            seen = True
            if name == "event":
                event.event = value
            elif name == "data":
                event.data.append(value)
            elif name == "id":
                event.id = value
        raise EOFError("stream ended")

    async def frame(self, kind: str) -> Any:
        """The next frame of type ``kind`` (skipping pings and the like)."""
        while True:
            event = await self.next()
            if event.event == "message" and event.frame["type"] == kind:
                return event.frame


class Session:
    """An open fallback session: its stream and where its frames are POSTed."""

    def __init__(self, http: httpx.AsyncClient, stream: Stream, post: str) -> None:
        self.http, self.stream, self.post_url = http, stream, post

    async def post(self, *frames: Any) -> httpx.Response:
        body = "\n".join(f if isinstance(f, str) else json.dumps(f) for f in frames)
        return await self.http.post(self.post_url, content=body.encode())


@contextlib.asynccontextmanager
async def session_of(
    http: httpx.AsyncClient, query: str = "", **headers: str
) -> AsyncIterator[Session]:
    async with http.stream("GET", "/ws/events" + query, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response)
        first = await stream.next()
        assert first.event == "session"
        post = str(httpx.URL(str(response.url)).join(first.frame["post"]))
        yield Session(http, stream, post)


async def test_a_session_runs_over_events_and_posts(hub_server: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http, session_of(http) as s:
        assert s.stream.retry is not None and 1000 <= s.stream.retry <= 5000
        welcome = await s.stream.frame("welcome")
        assert welcome["version"] == 1 and welcome["session"].startswith("s-")
        assert (await s.post({"type": "subscribe", "topic": "t"})).status_code == 204
        subscribed = await s.stream.frame("subscribed")
        assert (subscribed["topic"], subscribed["head"]) == ("t", 0)
        await hub_server.hub.publish("t", {"n": 1})
        event = await s.stream.next()
        assert event.frame == {**event.frame, "type": "message", "offset": 1, "data": {"n": 1}}
        assert event.id is not None  # the resume cursor
        # Several frames in one POST, handled in order; replies come on the stream.
        ping = {"type": "ping", "ts": 7}
        bad = {"type": "subscribe", "topic": ""}
        assert (await s.post(ping, "{not json", bad)).status_code == 204
        assert await s.stream.frame("pong") == {"type": "pong", "ts": 7}
        error = await s.stream.frame("error")
        assert error["code"] == "invalid_json"
        error = await s.stream.frame("error")
        assert error["code"] == "invalid_frame"
        assert hub_server.hub.connection_count == 1


async def test_a_plain_event_source_resumes_exactly_from_last_event_id(
    hub_server: HubServer,
) -> None:
    hub = hub_server.hub
    for n in range(1, 4):
        await hub.publish("a", n)
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        async with session_of(http, "?topic=a&topic=b&rewind=2") as s:
            assert (await s.stream.frame("subscribed"))["rewound"] == 2
            assert (await s.stream.frame("message"))["offset"] == 2
            assert (await s.stream.frame("message"))["offset"] == 3
            await s.stream.frame("subscribed")  # b, empty
            await hub.publish("b", "b1")
            assert (await s.stream.frame("message"))["topic"] == "b"
            last = s.stream.last_id
        # Away: what is published now must come back, once, on both topics.
        for n in range(4, 7):
            await hub.publish("a", n)
        await hub.publish("b", "b2")
        assert last is not None
        async with session_of(http, "?topic=a&topic=b&rewind=2", **{"Last-Event-ID": last}) as s:
            seen: list[tuple[str, int]] = []
            while len(seen) < 4:
                event = await s.stream.next()
                if event.event == "message" and event.frame["type"] == "message":
                    seen.append((event.frame["topic"], event.frame["offset"]))
            assert sorted(seen) == [("a", 4), ("a", 5), ("a", 6), ("b", 2)]
            await hub.publish("a", 7)
            assert (await s.stream.frame("message"))["offset"] == 7


async def test_a_payload_with_line_breaks_arrives_whole(hub_server: HubServer) -> None:
    async with (
        httpx.AsyncClient(base_url=hub_server.http_url) as http,
        session_of(http, "?topic=t") as s,
    ):
        await s.stream.frame("subscribed")
        body = b'{"topic": "t", "data": {\n  "multi": "line"\r\n}}'
        assert (await post_publish(http, body)).status_code == 200
        assert (await s.stream.frame("message"))["data"] == {"multi": "line"}


async def test_refusals_are_http_statuses(start_hub: StartHub) -> None:
    server = await start_hub(jwt_secret=SECRET, insecure_dev=False)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        async with http.stream("GET", "/ws/events") as response:
            assert response.status_code == 401
            assert json.loads(await response.aread())["code"] == "invalid_token"
        good = jwt.encode({"sub": "u", "exp": int(time.time()) + 300}, SECRET, "HS256")
        async with session_of(http, Authorization=f"Bearer {good}") as s:
            assert (await s.stream.frame("welcome"))["type"] == "welcome"
        gone = await http.post("/ws/frames?s=nonsense", content=b'{"type":"ping","ts":1}')
        assert gone.status_code == 404 and gone.json()["code"] == "no_session"


async def test_an_oversize_frame_closes_the_session_with_1009(hub_server: HubServer) -> None:
    limit = hub_server.hub.config.max_frame_bytes
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http, session_of(http) as s:
        await s.stream.frame("welcome")
        big = json.dumps({"type": "send", "id": "x-1", "event": "e", "data": "x" * limit})
        assert (await s.post(big)).status_code == 413
        event = await s.stream.next()
        while event.event != "close":
            event = await s.stream.next()
        assert event.frame["code"] == 1009
    await asyncio.sleep(T)
    assert hub_server.hub.connection_count == 0


async def test_a_restart_closes_streams_with_1012_and_its_hint(hub_server: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http, session_of(http) as s:
        await s.stream.frame("welcome")
        hub_server.hub.close_all()
        event = await s.stream.next()
        while event.event != "close":
            event = await s.stream.next()
        assert event.frame["code"] == 1012
        hint = json.loads(event.frame["reason"])["retry_after_ms"]
        assert s.stream.retry == hint  # a plain EventSource waits the hint too


async def test_a_page_on_an_allowed_origin_may_use_it_and_others_may_not(
    start_hub: StartHub,
) -> None:
    server = await start_hub(allowed_origins="http://app.example")
    allowed = {"Origin": "http://app.example"}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        ask = await http.options(
            "/ws/events",
            headers={**allowed, "Access-Control-Request-Headers": "authorization"},
        )
        assert ask.status_code == 204
        assert ask.headers["access-control-allow-origin"] == "http://app.example"
        assert "authorization" in ask.headers["access-control-allow-headers"]
        async with session_of(http, **allowed) as s:
            assert s.stream.response.headers["access-control-allow-origin"] == "http://app.example"
            await s.stream.frame("welcome")
            posted = await http.post(s.post_url, content=b'{"type":"ping","ts":1}', headers=allowed)
            assert posted.status_code == 204
            assert posted.headers["access-control-allow-origin"] == "http://app.example"
        other = {"Origin": "http://evil.example"}
        assert (await http.options("/ws/events", headers=other)).status_code == 403
        async with http.stream("GET", "/ws/events", headers=other) as response:
            assert response.status_code == 403  # as a cross-site WebSocket handshake is
            assert "access-control-allow-origin" not in response.headers


async def test_permissions_and_token_refresh_work_as_over_a_socket(start_hub: StartHub) -> None:
    server = await start_hub(jwt_secret=SECRET, insecure_dev=False)

    def token(ttl: int, topics: list[str]) -> str:
        claims = {"sub": "u", "exp": int(time.time()) + ttl, "topics": topics}
        return jwt.encode(claims, SECRET, "HS256")

    bearer = {"Authorization": f"Bearer {token(300, ['t'])}"}
    async with httpx.AsyncClient(base_url=server.http_url) as http, session_of(http, **bearer) as s:
        await s.stream.frame("welcome")
        await s.post({"type": "subscribe", "topic": "u"})
        refused = await s.stream.frame("error")
        assert (refused["code"], refused["ref"]) == ("forbidden", "u")
        await s.post({"type": "subscribe", "topic": "t"})
        assert (await s.stream.frame("subscribed"))["topic"] == "t"
        # In-connection refresh over POST: a token that no longer grants t revokes it.
        await s.post({"type": "auth", "token": token(600, ["other"])})
        revoked = await s.stream.frame("error")
        assert (revoked["code"], revoked["ref"]) == ("forbidden", "t")
        assert (await s.stream.frame("authed"))["subject"] == "u"
