"""Tether: reliable real-time updates over WebSocket.

Per-topic, in-order, exactly-once delivery across reconnects; loss is never
silent; client->hub messages are effectively-once. See docs/protocol.md.
"""

from typing import TYPE_CHECKING, Any

from .client import Client, ClientMetrics, Delivery, State
from .config import ClientConfig, HubConfig, OutboxPolicy
from .errors import (
    ClientClosed,
    CloseCode,
    ErrorCode,
    MessageDropped,
    MessageExpired,
    MessageTooBig,
    NackError,
    OutboxFull,
    Reject,
    SubscribeRefused,
    TetherError,
)
from .payload import InvalidPayload
from .protocol import PROTOCOL_VERSION, Cursor, Gap
from .server import Hub, Incoming
from .server.broker import BrokerUnavailable, TooManyTopics

__all__ = [
    "PROTOCOL_VERSION",
    "BrokerUnavailable",
    "Client",
    "ClientClosed",
    "ClientConfig",
    "ClientMetrics",
    "CloseCode",
    "Cursor",
    "Delivery",
    "ErrorCode",
    "Gap",
    "Hub",
    "HubConfig",
    "Incoming",
    "InvalidPayload",
    "MessageDropped",
    "MessageExpired",
    "MessageTooBig",
    "NackError",
    "OutboxFull",
    "OutboxPolicy",
    "Publisher",
    "RedisBroker",
    "Reject",
    "State",
    "SubscribeRefused",
    "TetherError",
    "TooManyTopics",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .publisher import Publisher
    from .server.redis_broker import RedisBroker


def __getattr__(name: str) -> Any:
    # Only scaled-out deployments need redis-py (~75 ms to import): load it on first use.
    if name == "Publisher":
        from .publisher import Publisher

        return Publisher
    if name == "RedisBroker":
        from .server.redis_broker import RedisBroker

        return RedisBroker
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
