"""The Python client with tokens: refresh in a live connection, no hot loop on failure."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from tether import State, SubscribeRefused
from tether.server.serve import HubServer

from ..conftest import StartHub
from ..support import Recorder, T, eventually

SECRET = "client-secret-client-secret-client-sec"


def make_token(sub: str = "alice", ttl: float = 300) -> str:
    claims = {"sub": sub, "exp": int(time.time() + ttl), "topics": ["t"]}
    return jwt.encode(claims, SECRET, "HS256")


@pytest.fixture
async def secure(start_hub: StartHub) -> HubServer:
    return await start_hub(jwt_secret=SECRET, insecure_dev=False, jwt_leeway=0)


async def test_token_is_refreshed_inside_the_live_connection(secure: HubServer) -> None:
    issued: list[str] = []

    def get_token() -> str:
        issued.append(make_token(ttl=2))
        return issued[-1]

    rec = Recorder(secure.url, get_token=get_token)
    await rec.subscribed("t")
    # Well past the first token's 2 s lifetime: refreshed in place, never disconnected.
    await asyncio.sleep(4.5)
    await secure.hub.publish("t", "still live")
    await eventually(lambda: len(rec.deliveries) == 1, what="delivery after expiry time")
    assert len(issued) >= 3
    assert rec.client.metrics.successful_connects == 1 and rec.reconnects == 0
    assert secure.hub.stats.auth_failures == 0
    await rec.close()


async def test_bad_static_token_stops_without_retrying(secure: HubServer) -> None:
    rec = Recorder(secure.url, token="not-a-jwt", circuit_cooldown=1000 * T)
    await rec.client.start()
    await rec.client.wait_for(State.FAILED, timeout=50 * T)
    await asyncio.sleep(10 * T)
    assert secure.hub.stats.auth_failures == 1
    assert "invalid token" in (rec.client.metrics.last_error or "")
    await rec.close()


async def test_token_source_recovers_from_a_bad_token(secure: HubServer) -> None:
    tokens = iter(["expired-or-garbage", make_token()])
    rec = Recorder(secure.url, get_token=lambda: next(tokens))
    await rec.subscribed("t")
    assert secure.hub.stats.auth_failures == 1
    assert rec.client.state is State.CONNECTED
    await rec.close()


def recording_errors(secure: HubServer) -> tuple[Recorder, list[tuple[str, str]]]:
    """A client with a token source whose ``on_error`` calls are kept."""
    errors: list[tuple[str, str]] = []
    rec = Recorder(
        secure.url, get_token=make_token, on_error=lambda code, msg: errors.append((code, msg))
    )
    return rec, errors


async def test_a_forbidden_subscribe_raises_and_is_not_retried_on_reconnect(
    secure: HubServer,
) -> None:
    rec, errors = recording_errors(secure)
    await rec.subscribed("t")
    with pytest.raises(SubscribeRefused) as refused:
        await rec.client.subscribe("projects.99.tasks", rec.on_message)
    assert (refused.value.topic, refused.value.code) == ("projects.99.tasks", "forbidden")
    assert secure.hub.stats.forbidden == 1
    assert errors == []  # the caller got the exception: on_error is for refusals nobody awaits
    # Reconnect: "t" is restored, the refused topic is not asked for again.
    rec.client.disconnect()
    await eventually(lambda: rec.reconnects == 1 and rec.client.is_live("t"), what="restored")
    await rec.client.subscribe("t", rec.on_message)  # an allowed subscribe returns normally
    assert secure.hub.stats.forbidden == 1
    await rec.close()


async def test_a_forbidden_subscription_made_offline_is_reported_to_on_error(
    secure: HubServer,
) -> None:
    rec, errors = recording_errors(secure)
    await rec.client.subscribe("projects.99.tasks", rec.on_message)  # offline: returns at once
    await rec.subscribed("t")
    await eventually(lambda: errors != [], what="the refusal reported")
    assert errors[0][0] == "forbidden" and errors[0][1].startswith("projects.99.tasks: ")
    await rec.close()
