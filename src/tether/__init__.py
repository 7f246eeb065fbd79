"""Tether: reliable real-time updates over WebSocket.

Per-topic, in-order, exactly-once delivery across reconnects; loss is never
silent; client->hub messages are effectively-once. See docs/protocol.md.
"""

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
    TetherError,
)
from .payload import InvalidPayload
from .protocol import PROTOCOL_VERSION, Cursor, Gap
from .server import Hub, Incoming
from .server.broker import TooManyTopics

__all__ = [
    "PROTOCOL_VERSION",
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
    "Reject",
    "State",
    "TetherError",
    "TooManyTopics",
]
__version__ = "0.1.0"
