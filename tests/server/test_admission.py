"""Client addresses behind a trusted load balancer (admission.py, ``trusted_proxies``)."""

from __future__ import annotations

import pytest
import websockets

from tether import HubConfig
from tether.server.admission import Admission

from ..conftest import StartHub


def admission(proxies: str, **options: object) -> Admission:
    return Admission(HubConfig(trusted_proxies=proxies, **options))  # type: ignore[arg-type]


def test_only_a_trusted_proxy_may_name_the_client() -> None:
    a = admission("127.0.0.1, 10.0.0.0/8")
    assert a.client_address("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    assert a.client_address("10.1.2.3", "203.0.113.7, 10.0.0.5") == "203.0.113.7"
    assert a.client_address("198.51.100.1", "203.0.113.7") == "198.51.100.1"  # forged
    assert a.client_address("127.0.0.1", None) == "127.0.0.1"
    # A client can prepend anything; only the hop the proxy itself appended counts.
    assert a.client_address("127.0.0.1", "1.2.3.4, 203.0.113.7") == "203.0.113.7"
    assert a.client_address("127.0.0.1", "not-an-ip") == "127.0.0.1"


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    a = admission("")
    assert a.client_address("127.0.0.1", "203.0.113.7") == "127.0.0.1"
    assert not a.is_proxy("127.0.0.1")


def test_a_bad_proxy_entry_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="trusted_proxies: 'nope'"):
        admission("127.0.0.1, nope")


async def test_clients_behind_a_trusted_proxy_each_get_their_own_handshake_budget(
    start_hub: StartHub,
) -> None:
    server = await start_hub(trusted_proxies="127.0.0.1", handshake_rate=0.001, handshake_burst=2)

    async def opens(forwarded: str) -> bool:
        try:
            async with websockets.connect(
                server.url, additional_headers={"X-Forwarded-For": forwarded}
            ):
                return True
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 429
            return False

    # Each client's own burst of 2, not the balancer's: 3 clients x 2 all get in ...
    assert [await opens(f"203.0.113.{n}") for n in (1, 1, 2, 2, 3, 3)] == [True] * 6
    # ... and a third handshake from one of them is that client's, refused.
    assert await opens("203.0.113.1") is False
    assert server.hub.stats.handshakes_refused == 1
