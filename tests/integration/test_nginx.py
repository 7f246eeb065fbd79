"""``deploy/nginx.conf`` in front of two real ``tether serve`` nodes (in-memory, no Redis).

Proves the shipped load-balancer config: the WebSocket upgrade and the ``tether.v1``
subprotocol pass end to end, HTTP (``POST /publish``, ``/healthz``, ``/metrics``,
``/tether.js``) is balanced over both nodes, and a SIGKILLed node is skipped for new
connections while its sockets are closed (clients reconnect and land on the survivor).
The idle timeout (> heartbeat) is checked in the rendered config, not by waiting.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tether import Client, Delivery, HubConfig, State

from ..cluster import NGINX_CONF, Nginx, Node, cluster, render_nginx_conf
from ..support import eventually

#: Generous bounds: these are deadlines for things that take milliseconds.
DEADLINE = 15.0


@pytest.fixture
async def lb() -> AsyncIterator[tuple[list[Node], Nginx]]:
    async with cluster(2, ["--insecure-dev"]) as (nodes, nginx):
        yield nodes, nginx


async def ws_open(url: str) -> tuple[ClientConnection, dict[str, Any]]:
    """A raw WebSocket offering ``tether.v1`` like the browser client; and its welcome."""
    ws = await connect(
        url,
        subprotocols=[Subprotocol("tether.v1")],
        open_timeout=DEADLINE,
        ping_interval=None,
        proxy=None,
    )
    try:
        async with asyncio.timeout(DEADLINE):
            welcome = json.loads(await ws.recv())
    except BaseException:
        await ws.close()
        raise
    return ws, welcome


async def connections(node: Node) -> int:
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        count: int = (await http.get(f"{node.url}/healthz")).json()["connections"]
        return count


async def eventually_connections(nodes: list[Node], expected: list[int]) -> None:
    async def counted() -> bool:
        return [await connections(n) for n in nodes] == expected

    await eventually(counted, timeout=DEADLINE, what=f"connections per node == {expected}")


def test_rendered_config_keeps_the_essentials() -> None:
    text = render_nginx_conf(NGINX_CONF.read_text(), listen_port=18080, upstreams=[18765, 18766])
    assert "listen 127.0.0.1:18080;" in text
    servers = re.findall(r"^\s*server (\d\S*) ", text, re.M)
    assert servers == ["127.0.0.1:18765", "127.0.0.1:18766"] * 2  # both upstreams: all nodes
    assert "8765" not in text.replace("18765", "")  # the shipped upstreams are all replaced
    # Idle WebSockets must outlive the hub's heartbeat (interval + timeout) at nginx.
    hub = HubConfig()
    budget = hub.heartbeat_interval + hub.heartbeat_timeout
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        values = re.findall(rf"^\s*{directive} (\d+)s;", text, re.M)
        assert len(values) == 2  # the WebSocket and the fallback transport's stream
        for value in values:
            assert int(value) > budget, f"{directive} {value}s <= heartbeat budget {budget}s"
    for needle in (
        "proxy_http_version 1.1;",
        "map $http_upgrade $connection_upgrade",
        "proxy_set_header Upgrade    $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
        "hash $remote_addr consistent;",
        "location /ws/ {",
        "proxy_set_header X-Forwarded-For",
        "proxy_set_header X-Real-IP",
        "proxy_next_upstream error timeout;",
        "max_fails=",
        "fail_timeout=",
        "keepalive 32;",
        "pid logs/nginx.pid;",
    ):
        assert needle in text, needle
    assert "Sec-WebSocket-Protocol" not in re.sub(r"#.*", "", text)  # passed through untouched


async def test_websocket_through_nginx_negotiates_tether_v1(
    lb: tuple[list[Node], Nginx],
) -> None:
    _, nginx = lb
    ws, welcome = await ws_open(nginx.ws_url)
    async with ws:
        assert ws.subprotocol == "tether.v1"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "tether.v1"
        assert welcome["type"] == "welcome"
        assert welcome["version"] == 1
        await ws.send(json.dumps({"type": "ping", "ts": 1}))
        async with asyncio.timeout(DEADLINE):
            assert json.loads(await ws.recv()) == {"type": "pong", "ts": 1}

    # The real Python client, subscribe then publish on the same balanced connection.
    got: asyncio.Queue[Delivery] = asyncio.Queue()
    async with Client(nginx.ws_url) as client:
        await client.wait_for(State.CONNECTED, timeout=DEADLINE)
        await client.subscribe("lb.echo", got.put_nowait)
        await asyncio.wait_for(client.publish("lb.echo", {"n": 1}), DEADLINE)
        delivery = await asyncio.wait_for(got.get(), DEADLINE)
    assert (delivery.offset, delivery.data) == (1, {"n": 1})


async def test_http_is_balanced_over_both_nodes(lb: tuple[list[Node], Nginx]) -> None:
    _, nginx = lb
    async with httpx.AsyncClient(base_url=nginx.url, timeout=DEADLINE) as http:
        replies = []
        for i in range(4):
            response = await http.post("/publish", json={"topic": "lb.http", "data": i})
            assert response.status_code == 200, response.text
            replies.append(response.json())
        for path in ("/healthz", "/metrics", "/tether.js"):
            assert (await http.get(path)).status_code == 200, path
    # In-memory nodes each keep their own log: two epochs, offsets 1, 2 in each, so
    # round robin reached both nodes.
    by_epoch: dict[str, list[int]] = {}
    for reply in replies:
        by_epoch.setdefault(reply["epoch"], []).append(reply["offset"])
    assert sorted(by_epoch.values()) == [[1, 2], [1, 2]]


async def test_the_fallback_stream_and_its_posts_meet_on_one_node(
    lb: tuple[list[Node], Nginx],
) -> None:
    # Round robin would send every other POST to the node without the stream (404).
    _, nginx = lb
    async with (
        httpx.AsyncClient(base_url=nginx.url, timeout=DEADLINE) as http,
        http.stream("GET", "/ws/events") as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()

        async def data(kind: str) -> Any:
            async with asyncio.timeout(DEADLINE):
                async for line in lines:
                    if line.startswith("data: ") and f'"{kind}"' in line:
                        return json.loads(line[6:])
            raise EOFError

        post = httpx.URL(str(response.url)).join((await data("post"))["post"])
        assert (await data("welcome"))["type"] == "welcome"
        for n in range(6):
            sent = await http.post(post, content=json.dumps({"type": "ping", "ts": n}))
            assert sent.status_code == 204, sent.text
            assert await data("pong") == {"type": "pong", "ts": n}


async def test_killed_node_is_skipped_and_its_sockets_closed(
    lb: tuple[list[Node], Nginx],
) -> None:
    nodes, nginx = lb
    first, _ = await ws_open(nginx.ws_url)
    second, _ = await ws_open(nginx.ws_url)
    try:
        await eventually_connections(nodes, [1, 1])  # round robin: one socket per node

        nodes[0].kill()
        await nodes[0].wait()

        # nginx closes the socket whose node died; the other one still works.
        waits = {asyncio.ensure_future(ws.wait_closed()): ws for ws in (first, second)}
        try:
            done, _ = await asyncio.wait(
                waits, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waits:
                waiter.cancel()
        assert len(done) == 1, "exactly the dead node's socket is closed"
        (closed,) = (waits[w] for w in done)
        alive = second if closed is first else first
        await alive.send(json.dumps({"type": "ping", "ts": 2}))
        async with asyncio.timeout(DEADLINE):
            assert json.loads(await alive.recv()) == {"type": "pong", "ts": 2}

        # Every new connection succeeds, on the survivor (the refused connect to the
        # dead node is retried on the next upstream, then the node is marked failed).
        for _ in range(4):
            ws, welcome = await ws_open(nginx.ws_url)
            async with ws:
                assert welcome["type"] == "welcome"
                assert ws.subprotocol == "tether.v1"
        async with httpx.AsyncClient(base_url=nginx.url, timeout=DEADLINE) as http:
            epochs = set()
            for i in range(4):
                response = await http.post("/publish", json={"topic": "lb.kill", "data": i})
                assert response.status_code == 200, response.text
                epochs.add(response.json()["epoch"])
        assert len(epochs) == 1
        # The first of them was sent to the dead node by round robin and moved on.
        assert any("Connection refused" in line for line in nginx.proc_err()), nginx.proc_err()
        assert await connections(nodes[1]) >= 1  # the surviving socket
    finally:
        for ws in (first, second):
            await ws.close()
