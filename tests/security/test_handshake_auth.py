"""JWT on the handshake, in-connection refresh and expiry, against a live hub."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import T

SECRET = "test-secret-test-secret-test-secret!"
ROOT = Path(__file__).resolve().parents[2]


def make_token(sub: str = "alice", *, ttl: float = 300, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), **claims}, SECRET, "HS256")


@pytest.fixture
async def secure(start_hub: StartHub) -> HubServer:
    return await start_hub(jwt_secret=SECRET, insecure_dev=False, jwt_leeway=0)


async def closed_with(ws: websockets.ClientConnection) -> tuple[int | None, str | None]:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    return ws.close_code, ws.close_reason


async def test_valid_bearer_token_is_welcomed(secure: HubServer) -> None:
    headers = {"Authorization": f"Bearer {make_token(topics=['t'])}"}
    async with websockets.connect(secure.url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "invalid token: none presented"),
        ({"Authorization": "Bearer nonsense"}, "invalid token"),
        ({"Authorization": f"Bearer {make_token(ttl=-60)}"}, "token expired"),
    ],
)
async def test_bad_tokens_close_1008_with_the_reason(
    secure: HubServer, headers: dict[str, str], reason: str
) -> None:
    async with websockets.connect(secure.url, additional_headers=headers) as ws:
        code, text = await closed_with(ws)
    assert code == 1008 and text is not None and text.startswith(reason)
    assert secure.hub.connection_count == 0
    assert secure.hub.stats.auth_failures == 1


async def test_browser_style_subprotocol_token(secure: HubServer) -> None:
    protocols = ["tether.v1", f"tether.token.{make_token()}"]
    async with websockets.connect(secure.url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "tether.v1"  # the token itself is never echoed
        assert json.loads(await ws.recv())["type"] == "welcome"


async def test_query_token_only_when_allowed(start_hub: StartHub) -> None:
    token = make_token()
    off = await start_hub(jwt_secret=SECRET, insecure_dev=False)
    async with websockets.connect(f"{off.url}?token={token}") as ws:
        assert (await closed_with(ws))[0] == 1008
    on = await start_hub(jwt_secret=SECRET, insecure_dev=False, allow_query_token=True)
    async with websockets.connect(f"{on.url}?token={token}") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


async def test_refresh_keeps_subject_and_rechecks_subscriptions(secure: HubServer) -> None:
    headers = {"Authorization": f"Bearer {make_token(topics=['a', 'b'])}"}
    async with websockets.connect(secure.url, additional_headers=headers) as ws:
        await ws.recv()
        for topic in ("a", "b"):
            await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
        # Another subject: refused, nothing changes.
        await ws.send(json.dumps({"type": "auth", "token": make_token("mallory", topics="*")}))
        reply = json.loads(await ws.recv())
        assert reply["code"] == "invalid_token"
        # Same subject, narrower rights: 'b' is dropped with forbidden.
        await ws.send(json.dumps({"type": "auth", "token": make_token(topics=["a"])}))
        dropped = json.loads(await ws.recv())
        assert dropped == {
            "type": "error",
            "code": "forbidden",
            "message": "no longer allowed",
            "ref": "b",
            "retry_after_ms": None,
        }
        authed = json.loads(await ws.recv())
        assert authed["type"] == "authed" and authed["subject"] == "alice"
        await secure.hub.publish("b", "secret")
        await secure.hub.publish("a", "fine")
        message = json.loads(await ws.recv())
        assert message["topic"] == "a"


async def test_expired_unrefreshed_connection_is_closed_1008(secure: HubServer) -> None:
    headers = {"Authorization": f"Bearer {make_token(ttl=1 + 10 * T)}"}
    async with websockets.connect(secure.url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong", "ts": frame["ts"]}))
    assert ws.close_code == 1008 and ws.close_reason == "token expired"


async def test_origin_checks(start_hub: StartHub) -> None:
    same_origin = await start_hub(allowed_origins="")
    host = f"127.0.0.1:{same_origin.port}"
    async with websockets.connect(same_origin.url, origin=f"http://{host}") as ws:  # type: ignore[arg-type]
        assert json.loads(await ws.recv())["type"] == "welcome"
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(same_origin.url, origin="http://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    listed = await start_hub(allowed_origins="https://app.example, https://admin.example")
    async with websockets.connect(listed.url, origin="https://admin.example") as ws:  # type: ignore[arg-type]
        assert json.loads(await ws.recv())["type"] == "welcome"
    with pytest.raises(InvalidStatus):
        await websockets.connect(listed.url, origin=f"http://{host}")  # type: ignore[arg-type]
    # Non-browser clients send no Origin and are let through (auth, if on, still applies).
    async with websockets.connect(listed.url) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


async def test_connections_per_identity_are_capped(start_hub: StartHub) -> None:
    server = await start_hub(jwt_secret=SECRET, insecure_dev=False, max_connections_per_identity=2)
    alice = {"Authorization": f"Bearer {make_token('alice')}"}
    bob = {"Authorization": f"Bearer {make_token('bob')}"}
    async with (
        websockets.connect(server.url, additional_headers=alice) as a1,
        websockets.connect(server.url, additional_headers=alice) as a2,
    ):
        await a1.recv()
        await a2.recv()
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(server.url, additional_headers=alice)
        assert info.value.response.status_code == 429
        async with websockets.connect(server.url, additional_headers=bob) as b:
            assert json.loads(await b.recv())["type"] == "welcome"


@pytest.mark.parametrize("document", ["README.md", "docs/security.md"])
async def test_the_docs_claims_examples_are_accepted_as_written(
    secure: HubServer, document: str
) -> None:
    """Issue 10 item 4: the README's claims had no ``exp`` (refused); keep every example
    one a hub accepts, and one that grants what the text says."""
    text = (ROOT / document).read_text()
    examples = [json.loads(m) for m in re.findall(r'\{"sub": [^`\n]*?\}(?=`|\n)', text)]
    assert examples, f"no claims example found in {document}"
    for claims in examples:
        token = jwt.encode(claims, SECRET, "HS256")
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(secure.url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "subscribe", "topic": "projects.42.tasks"}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
