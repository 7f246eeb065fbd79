"""The small interfaces the hub's adapters depend on, instead of the concrete ``Hub``.

The transports (``fastws.py``'s raw protocol, ``app.py``'s ASGI endpoint) only
need :class:`ConnectionHost`: admit a handshake, then attach, feed and detach a
link. The HTTP endpoints and metrics need :class:`AppHost`. ``Hub`` implements
both; nothing in ``server/`` imports ``hub.py`` except the package's front door
(``__init__``) and ``serve.py``, so there is no import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import msgspec

from ..auth import Action, Authenticator, Identity
from ..config import HubConfig
from ..history import Entry
from .broker import Broker
from .links import Link
from .stats import HubStats

if TYPE_CHECKING:
    from .admission import Refusal
    from .session import ServerSession


class Admitted(Protocol):
    """A handshake decision (``hub.Handshake``)."""

    @property
    def refusal(self) -> Refusal | None: ...
    @property
    def identity(self) -> Identity: ...
    @property
    def auth_error(self) -> str | None: ...
    @property
    def subprotocol(self) -> str | None: ...
    @property
    def address(self) -> str: ...


class ConnectionHost(Protocol):
    """What a WebSocket transport needs from the hub."""

    @property
    def config(self) -> HubConfig: ...

    def handshake(
        self,
        *,
        headers: Mapping[str, str],
        subprotocols: list[str],
        query: Mapping[str, str],
        address: str,
    ) -> Admitted: ...
    def new_session(self) -> ServerSession: ...
    def restart_reason(self) -> str: ...
    def close_link(self, link: Link, code: int = ...) -> None: ...
    def overflow(self, link: Link) -> None: ...
    def attach(self, link: Link) -> None: ...
    def receive(self, link: Link, data: str | bytes | None, *, binary: bool = False) -> None: ...
    def touch(self, link: Link) -> None: ...
    def detach(self, link: Link) -> None: ...


class AppHost(ConnectionHost, Protocol):
    """What the hub's ASGI app and its metrics need besides connections."""

    @property
    def authenticator(self) -> Authenticator | None: ...
    @property
    def broker(self) -> Broker: ...
    @property
    def closing(self) -> bool: ...
    @property
    def connection_count(self) -> int: ...
    @property
    def stats(self) -> HubStats: ...

    def allowed(self, identity: Identity, action: Action, topic: str) -> bool: ...
    def origin_allowed(self, origin: str | None, host: str | None) -> bool: ...
    async def publish_raw(
        self, topic: str, data: msgspec.Raw, *, checked: bool = False
    ) -> Entry: ...
    async def start(self) -> None: ...
    async def drain(self, timeout: float | None = None) -> None: ...
    def close_all(self, code: int = ...) -> None: ...
    async def aclose(self) -> None: ...
