"""Identities x topics x actions, each cell checked against a live hub: nothing leaks."""

from __future__ import annotations

import fnmatch
import itertools
import json
import time
from typing import Any

import httpx
import jwt
import pytest
import websockets

from tether.auth import Action, Identity
from tether.server.serve import HubServer

from ..conftest import StartHub

SECRET = "matrix-secret-matrix-secret-matrix-secret"

IDENTITIES: dict[str, dict[str, Any]] = {
    "viewer": {"topics": ["projects.42.*"]},
    "editor": {"topics": ["projects.42.*"], "publish": ["projects.42.*"]},
    "admin": {"topics": ["*"], "publish": ["*"]},
    "nobody": {},
}
TOPICS = ["projects.42.tasks", "projects.43.tasks", "chat.room1"]


def token(name: str) -> str:
    claims = {"sub": name, "exp": int(time.time()) + 300, **IDENTITIES[name]}
    return jwt.encode(claims, SECRET, "HS256")


def expected(name: str, topic: str, action: Action) -> bool:
    patterns = IDENTITIES[name].get("topics" if action is Action.SUBSCRIBE else "publish", [])
    return any(fnmatch.fnmatchcase(topic, p) for p in patterns)


async def reply(ws: websockets.ClientConnection) -> dict[str, Any]:
    """The next frame that is not a topic message (our own publishes may echo back)."""
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] != "message":
            return frame


@pytest.fixture
async def secure(start_hub: StartHub) -> HubServer:
    return await start_hub(jwt_secret=SECRET, insecure_dev=False)


async def test_permission_matrix_over_websocket(secure: HubServer) -> None:
    cells = 0
    for name in IDENTITIES:
        headers = {"Authorization": f"Bearer {token(name)}"}
        async with websockets.connect(secure.url, additional_headers=headers) as ws:
            await ws.recv()
            for n, topic in enumerate(TOPICS):
                await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
                answer = await reply(ws)
                allowed = expected(name, topic, Action.SUBSCRIBE)
                assert answer["type"] == ("subscribed" if allowed else "error"), (name, topic)
                if not allowed:
                    assert answer["code"] == "forbidden" and answer["ref"] == topic
                await ws.send(
                    json.dumps(
                        {"type": "publish", "id": f"{name}-{n}", "topic": topic, "data": name}
                    )
                )
                answer = await reply(ws)
                allowed = expected(name, topic, Action.PUBLISH)
                assert answer["type"] == ("ack" if allowed else "nack"), (name, topic)
                if not allowed:
                    assert answer["code"] == "forbidden"
                cells += 2
    assert cells == len(IDENTITIES) * len(TOPICS) * 2
    # No publish slipped through: each topic's head counts only the allowed publishers.
    for topic in TOPICS:
        allowed_publishers = sum(expected(n, topic, Action.PUBLISH) for n in IDENTITIES)
        assert (await secure.hub.topic_head(topic)).offset == allowed_publishers


async def test_permission_matrix_over_http(secure: HubServer) -> None:
    async with httpx.AsyncClient(base_url=secure.http_url) as http:
        for name, topic in itertools.product(IDENTITIES, TOPICS):
            reply = await http.post(
                "/publish",
                json={"topic": topic, "data": 1},
                headers={"Authorization": f"Bearer {token(name)}"},
            )
            assert reply.status_code == (200 if expected(name, topic, Action.PUBLISH) else 403)
        anonymous = await http.post("/publish", json={"topic": "chat.room1", "data": 1})
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"


async def test_api_key_and_insecure_dev(start_hub: StartHub) -> None:
    keyed = await start_hub(api_keys="k-1, k-2", insecure_dev=False)
    async with httpx.AsyncClient(base_url=keyed.http_url) as http:
        body = {"topic": "t", "data": 1}
        assert (await http.post("/publish", json=body)).status_code == 401
        assert (
            await http.post("/publish", json=body, headers={"X-API-Key": "nope"})
        ).status_code == 401
        assert (
            await http.post("/publish", json=body, headers={"X-API-Key": "k-2"})
        ).status_code == 200
        assert (
            await http.post("/publish", json=body, headers={"Authorization": "Bearer k-1"})
        ).status_code == 200
    dev = await start_hub(insecure_dev=True)
    async with httpx.AsyncClient(base_url=dev.http_url) as http:
        assert (await http.post("/publish", json={"topic": "t", "data": 1})).status_code == 200


async def test_authorize_hook_decides_in_code(secure: HubServer) -> None:
    @secure.hub.authorizer
    def only_own_topics(identity: Identity, topic: str, action: Action) -> bool:
        return topic == f"user.{identity.subject}"

    headers = {"Authorization": f"Bearer {token('nobody')}"}  # no claims at all
    async with websockets.connect(secure.url, additional_headers=headers) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "topic": "user.nobody"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await ws.send(json.dumps({"type": "subscribe", "topic": "user.admin"}))
        assert json.loads(await ws.recv())["code"] == "forbidden"
