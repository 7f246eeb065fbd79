"""End to end through the CLI: ``tether serve``, ``tether listen --json``, ``tether publish``.

A listener behind a chaos proxy lives through repeated cuts, a half-open stall
and a server restart (SIGTERM, then a fresh process with empty history). It must
print every offset exactly once and report the restart's gap on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest

import tether
from tether.chaos import ChaosProxy
from tether.cli import build_parser, config_doc

from ..conftest import StartHub
from ..processes import Proc, free_port, serve, spawn
from ..support import T, eventually


async def start_serve(port: int) -> Proc:
    return await serve(
        port,
        "--heartbeat-interval",
        str(3 * T),
        "--heartbeat-timeout",
        str(3 * T),
        "--restart-spread",
        str(5 * T),
    )


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.proc.returncode is None:
            await proc.stop(signal.SIGKILL)


async def test_listen_survives_cuts_stall_and_restart(procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    server = await start_serve(port)
    procs.append(server)
    proxy = ChaosProxy(target=("127.0.0.1", port))
    await proxy.start()
    listener = await spawn(
        "listen",
        f"ws://127.0.0.1:{proxy.port}/ws",
        "--topic",
        "jobs",
        "--json",
        "--backoff-base",
        str(T),
        "--backoff-cap",
        str(3 * T),
        "--connect-timeout",
        str(10 * T),
        # Backoff is squeezed to test scale, so ten attempts span only ~2 s: a restart
        # on a loaded machine can take longer. The circuit may open; it must then probe
        # again at test scale too (the default cooldown is a minute).
        "--circuit-cooldown",
        str(5 * T),
    )
    procs.append(listener)
    await eventually(
        lambda: any(e.get("to") == "connected" for e in listener.json_err()), what="listening"
    )
    # "connected" precedes the hub's confirmation of the (pipelined) subscribe by a moment;
    # a fresh subscription starts live, so give it that moment before the first publish.
    await asyncio.sleep(5 * T)
    base = f"http://127.0.0.1:{port}"
    published = 0

    async def publish(http: httpx.AsyncClient, n: int) -> None:
        nonlocal published
        for _ in range(n):
            reply = await http.post(f"{base}/publish", json={"topic": "jobs", "data": published})
            assert reply.status_code == 200
            published += 1
            await asyncio.sleep(T / 10)

    # The CLI publisher works too.
    one = await spawn("publish", base, "jobs", json.dumps({"via": "cli"}))
    assert await one.wait() == 0, one.err
    assert json.loads(one.out[0])["offset"] == 1
    published = 1

    async with httpx.AsyncClient() as http:

        def connected() -> bool:
            states = [e for e in listener.json_err() if e["event"] == "state"]
            return states[-1]["to"] == "connected"

        for _ in range(3):  # repeated cuts while publishing
            await publish(http, 10)
            await eventually(connected, what="connected before the cut")
            assert proxy.cut() == 1
        await publish(http, 10)
        await eventually(connected, what="connected before the stall")
        proxy.stall()  # half-open: detected by the listener's heartbeat deadline
        await publish(http, 5)
        await eventually(
            lambda: any(e.get("to") == "reconnecting" for e in listener.json_err()[-3:]),
            what="stall detected",
        )
        proxy.heal()
        await publish(http, 5)
        first_epoch_total = published
        await eventually(lambda: len(listener.out) == first_epoch_total, what="caught up")

        # Restart: SIGTERM exits promptly; the new process has a new epoch and empty history.
        assert await server.stop(signal.SIGTERM, timeout=10) == 0
        server = await start_serve(port)
        procs.append(server)
        published = 0
        await publish(http, 10)

    try:
        await eventually(lambda: len(listener.out) == first_epoch_total + 10, what="new epoch")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the listener said: {listener.err[-8:]}") from None
    await listener.stop(signal.SIGINT)
    await proxy.stop()

    lines = [json.loads(line) for line in listener.out]
    epochs = list(dict.fromkeys(line["epoch"] for line in lines))
    assert len(epochs) == 2
    for epoch, count in zip(epochs, (first_epoch_total, 10), strict=True):
        offsets = [line["offset"] for line in lines if line["epoch"] == epoch]
        assert offsets == list(range(1, count + 1)), (epoch, offsets)
    assert [line["data"] for line in lines[1:first_epoch_total]] == list(
        range(1, first_epoch_total)
    )
    events = listener.json_err()
    resyncs = [e for e in events if e["event"] == "resync"]
    assert resyncs == [
        {
            "event": "resync",
            "topic": "jobs",
            "missing": [{"epoch": epochs[0], "from": first_epoch_total + 1, "to": None}],
        }
    ]
    assert sum(1 for e in events if e["event"] == "reconnect") >= 5


async def test_a_listen_that_cannot_succeed_exits_non_zero_and_says_why(
    procs: list[Proc],
) -> None:
    port = free_port()
    server = await serve(port, "--jwt-secret", "s" * 32)  # every connection needs a token
    procs.append(server)
    listener = await spawn("listen", f"ws://127.0.0.1:{port}/ws", "--topic", "jobs")
    procs.append(listener)
    assert await listener.wait(timeout=60) == 1
    assert any("gave up" in line and "invalid token" in line for line in listener.err), listener.err


async def test_listen_announces_each_subscription_and_exits_on_a_refused_one(
    procs: list[Proc],
) -> None:
    port = free_port()
    secret = "s" * 32
    server = await serve(port, "--jwt-secret", secret)
    procs.append(server)
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 600, "topics": ["jobs"]}, secret)
    url = f"ws://127.0.0.1:{port}/ws"
    listener = await spawn("listen", url, "--topic", "jobs", "--json", "--token", token)
    procs.append(listener)
    # What a script waits for before it publishes (the README's CLI block does).
    await eventually(
        lambda: {"event": "subscribed", "topic": "jobs"} in listener.json_err(),
        what="the subscription announced",
    )
    refused = await spawn("listen", url, "--topic", "jobs", "--topic", "secret", "--token", token)
    procs.append(refused)
    assert await refused.wait(timeout=60) == 1
    assert "[subscribed] jobs" in refused.err
    assert any("gave up: secret: forbidden" in line for line in refused.err), refused.err


async def test_listen_rewind_prints_the_last_messages_then_live_ones(procs: list[Proc]) -> None:
    port = free_port()
    procs.append(await serve(port))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        for n in range(1, 6):
            reply = await http.post(f"{base}/publish", json={"topic": "jobs", "data": n})
            assert reply.status_code == 200
        listener = await spawn(
            "listen", f"ws://127.0.0.1:{port}/ws", "--topic", "jobs", "--json", "--rewind", "3"
        )
        procs.append(listener)
        await eventually(
            lambda: {"event": "subscribed", "topic": "jobs"} in listener.json_err(),
            what="the subscription announced",
        )
        reply = await http.post(f"{base}/publish", json={"topic": "jobs", "data": 6})
        assert reply.status_code == 200
        await eventually(lambda: len(listener.out) >= 4, what="three rewound and one live")
    await asyncio.sleep(0.2)  # nothing else may follow
    printed = [json.loads(line) for line in listener.out]
    assert [(m["offset"], m["data"]) for m in printed] == [(3, 3), (4, 4), (5, 5), (6, 6)]


async def test_listen_rejects_a_negative_rewind() -> None:
    proc = await spawn("listen", "ws://127.0.0.1:1/ws", "--topic", "t", "--rewind", "-1")
    assert await proc.wait() == 2
    assert any("--rewind" in line and "must be 0 or more" in line for line in proc.err), proc.err


async def test_the_cli_names_its_version() -> None:
    proc = await spawn("--version")
    assert await proc.wait() == 0
    assert proc.out == [f"tether {tether.__version__}"]


async def test_serve_with_a_bad_option_says_which_in_one_line() -> None:
    proc = await spawn("serve", "--port", "0", "--trusted-proxies", "nope")
    assert await proc.wait() == 2
    assert proc.err == ["tether serve: trusted_proxies: 'nope' is not an address or network"]


async def test_serve_on_a_taken_port_exits_non_zero_saying_so(procs: list[Proc]) -> None:
    port = free_port()
    procs.append(await serve(port))
    second = await spawn("serve", "--port", str(port))
    assert await second.wait() == 1
    assert any(f"cannot listen on 127.0.0.1:{port}" in line for line in second.err), second.err


def test_help_is_plain_text_and_every_option_says_what_it_does() -> None:
    """Issue 10 item 9: raw reST in --help, a subcommand missing from the summary,
    options without help text, and a blank code span for empty defaults."""
    parser = build_parser()
    top = parser.format_help()
    assert "``" not in top
    subcommands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name, sub in subcommands.items():
        assert name in top, f"tether --help does not name {name}"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"tether {name} {action.option_strings[0]} has no help text"
    assert "``" not in config_doc(), "an empty default renders as a blank code span"


async def test_the_publish_401_names_the_fix_for_the_cli_and_for_code(
    start_hub: StartHub,
) -> None:
    server = await start_hub(api_keys="k", insecure_dev=False)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        reply = await http.post("/publish", json={"topic": "t", "data": 1})
    message = reply.json()["message"]
    for fix in ("--api-keys", "TETHER_API_KEYS", "Hub(api_keys=", "--token", "--insecure-dev"):
        assert fix in message
    assert "Hub(insecure_dev=True)" in message
