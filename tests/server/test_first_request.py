"""The accept gate's first protocol: the hub's handshake goes straight to the WebSocket
protocol, every other request to HTTP, however the bytes arrive (server/http.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import time

from tether.server.serve import HubServer

from ..conftest import StartHub

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
).encode()


async def status_of(server: HubServer, *chunks: bytes) -> bytes:
    """Send ``chunks`` (a pause between each), return the response's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
        return (await asyncio.wait_for(reader.readline(), 10)).rstrip()
    finally:
        writer.close()


async def test_a_handshake_in_pieces_is_upgraded(hub_server: HubServer) -> None:
    pieces = [HANDSHAKE[:3], HANDSHAKE[3:20], HANDSHAKE[20:-2], HANDSHAKE[-2:]]
    assert await status_of(hub_server, *pieces) == b"HTTP/1.1 101 Switching Protocols"


async def test_other_requests_go_to_http(hub_server: HubServer) -> None:
    assert await status_of(hub_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == (
        b"HTTP/1.1 200 OK"
    )
    # A longer path that starts like the WebSocket's is not it.
    wsx = await status_of(hub_server, b"GET /wsx HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wsx == b"HTTP/1.1 404 Not Found"


async def test_a_plain_get_of_the_websocket_path_is_refused_not_hung(
    hub_server: HubServer,
) -> None:
    status = await status_of(hub_server, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 4"), status


async def test_an_oversized_handshake_head_is_refused(hub_server: HubServer) -> None:
    padding = b"X-Pad: " + b"a" * 4000 + b"\r\n"
    head = HANDSHAKE[:-2] + padding * 20 + b"\r\n"  # 80 KiB of headers
    status = await status_of(hub_server, head)
    assert status == b"" or status.startswith(b"HTTP/1.1 4"), status


async def test_the_wait_for_the_request_line_counts_against_the_http_deadline(
    start_hub: StartHub,
) -> None:
    """One deadline per connection: handing over to HTTP does not restart it (slowloris
    could otherwise take almost twice ``handshake_timeout``)."""
    server = await start_hub(handshake_timeout=4.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    opened = time.monotonic()
    await asyncio.sleep(3.0)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a line, then headers that never end
    assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the hub
    # 4 s after connecting (a restarted deadline would be 7 s); generous for a loaded machine.
    assert time.monotonic() - opened < 6.0
    writer.close()
