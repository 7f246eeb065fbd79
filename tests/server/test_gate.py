"""The accept gate on real sockets: cheap 429s, hand-off, bounded turns, fd exhaustion."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tether.config import HubConfig
from tether.server.admission import Admission
from tether.server.gate import AcceptGate, listening_socket, refusal, somaxconn

from ..conftest import StartHub
from ..support import T, eventually


class Greeter(asyncio.Protocol):
    """Stands in for the HTTP protocol: says hello, so a test can tell it was reached."""

    def __init__(self, made: list[Greeter]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"hello")
        self.made.append(self)


class Gate(AcceptGate):
    """A gate on a fresh loopback socket that records the protocols it reached."""

    def __init__(self, *, burst: int, per_turn: int = 32, retry_delay: float = 1.0) -> None:
        self.made: list[Greeter] = []
        self.refused = 0
        super().__init__(
            listening_socket("127.0.0.1", 0, backlog=64),
            lambda: Greeter(self.made),
            admission=Admission(HubConfig(handshake_rate=0.001, handshake_burst=burst)),
            per_turn=per_turn,
            on_refused=self._count_refusal,
            retry_delay=retry_delay,
        )

    def _count_refusal(self) -> None:
        self.refused += 1


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    gate = Gate(burst=2)
    gate.open()
    yield gate
    gate.close()


async def exchange(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(5), 50 * T)
    finally:
        writer.close()


async def test_within_the_bucket_connections_reach_the_protocol(gate: Gate) -> None:
    port = gate.sock.getsockname()[1]
    assert await exchange(port) == b"hello"
    assert await exchange(port) == b"hello"
    assert len(gate.made) == 2 and gate.refused == 0


async def test_over_the_bucket_a_canned_429_then_a_clean_close(gate: Gate) -> None:
    port = gate.sock.getsockname()[1]
    for _ in range(2):
        await exchange(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    # The whole response, then EOF (a FIN): not a connection reset.
    assert await asyncio.wait_for(reader.read(), 50 * T) == gate.refusal
    writer.close()
    assert gate.refused == 1 and len(gate.made) == 2
    assert gate.refusal.startswith(b"HTTP/1.1 429 ")


async def test_one_turn_accepts_at_most_per_turn() -> None:
    gate = Gate(burst=100, per_turn=3)
    port = gate.sock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(7)]
    try:
        gate.open()
        gate.accept_ready()  # one turn's worth, as the loop's reader callback would run it
        assert gate.handing_off == 3
        # The rest wait in the kernel's backlog and are taken on later turns.
        await eventually(lambda: len(gate.made) == 7, what="all accepted")
    finally:
        gate.close()
        for c in clients:
            c.close()


async def test_close_stops_accepting(gate: Gate) -> None:
    port = gate.sock.getsockname()[1]
    gate.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE behaviour is Linux's")
async def test_out_of_descriptors_pauses_instead_of_spinning() -> None:
    gate = Gate(burst=100, retry_delay=5 * T)
    port = gate.sock.getsockname()[1]
    # The connecting side lives in another process: this one is about to run out of fds.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import socket, sys, time\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "print('connected', flush=True)\n"
        "sys.stdout.flush(); time.sleep(30)",
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 50 * T) == b"connected\n"
        probe = socket.socket()  # takes the lowest free fd: a limit there leaves none free
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe.fileno(), hard))
        probe.close()
        gate.open()
        await eventually(lambda: gate.paused, what="paused on EMFILE")
        assert gate.made == []  # nothing accepted, and the reader is off: no busy loop
        assert "paused" in repr(gate)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        # With descriptors back, the waiting connection is accepted after the pause.
        await eventually(lambda: len(gate.made) == 1, what="accepted after the pause")
        assert not gate.paused
    finally:
        gate.close()
        child.kill()
        await child.wait()


def test_retry_after_is_the_refill_time_of_one_token() -> None:
    assert b"Retry-After: 1\r\n" in refusal(20.0)
    assert b"Retry-After: 4\r\n" in refusal(0.25)
    assert b"Retry-After: 60\r\n" in refusal(0)  # no refill: come back much later


def listen_queue_length(port: int) -> int:
    """The accept queue the kernel gave the socket listening on ``port`` (``ss``'s Send-Q)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


async def test_a_hub_listens_with_a_backlog_sized_for_a_reconnect_storm(
    start_hub: StartHub,
) -> None:
    server = await start_hub()  # the default listen_backlog
    expected = min(HubConfig().listen_backlog, somaxconn() or HubConfig().listen_backlog)
    assert expected >= 1024  # a fleet's reconnect queues instead of losing SYNs
    assert listen_queue_length(server.port) == expected
