"""Error codes, close codes and exceptions shared by the hub and the clients.

Codes are part of the wire protocol (docs/protocol.md): they are stable within
a protocol version and are never renamed.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Codes carried by ``error`` and ``nack`` frames."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    BINARY_FRAME = "binary_frame"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    NO_HANDLER = "no_handler"
    HANDLER_ERROR = "handler_error"
    OVERLOADED = "overloaded"
    FORBIDDEN = "forbidden"
    INVALID_TOKEN = "invalid_token"
    RATE_LIMITED = "rate_limited"
    INVALID_PAYLOAD = "invalid_payload"
    TOO_MANY_TOPICS = "too_many_topics"
    #: The shared broker (Redis) cannot be reached: nothing was published; retry later.
    UNAVAILABLE = "unavailable"
    #: A retry of a message another hub node is still handling: retry later for its outcome.
    IN_PROGRESS = "in_progress"


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the protocol (docs/protocol.md, Close codes).

    The hub sends 1000-4008 and each tells a client what to do; a client sends 1000,
    ``DROPPED`` and ``PROTOCOL_MISMATCH`` (a browser may send only 1000 and 3000-4999).
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL = 1006  # never sent: reported locally when the TCP connection dies
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008
    #: Client-sent: it abandons a connection it no longer trusts (the reason says why).
    DROPPED = 4000
    #: Client-sent: the hub's first frame was not a ``welcome`` of a version it speaks.
    PROTOCOL_MISMATCH = 4002


#: Close codes after which a client must not reconnect on its own.
NO_RECONNECT_CODES = frozenset({CloseCode.NORMAL})
#: Close codes after which a client stops (FAILED) unless it can get a fresh credential.
AUTH_FAILURE_CODES = frozenset({CloseCode.POLICY_VIOLATION})
#: Close codes whose reason carries a ``retry_after_ms`` hint.
HINTED_CODES = frozenset({CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER})


class TetherError(Exception):
    """Base class of every exception Tether raises on purpose."""


class ProtocolError(TetherError):
    """A frame could not be decoded or did not match the schema.

    ``code`` is the :class:`ErrorCode` to report to the peer and ``ref`` the
    offending frame's ``id`` or ``topic`` when it could be read. ``nack_id`` is set
    when the frame was a ``send``/``publish`` with a readable id: it is answered with
    a ``nack`` for that id, so the sender stops retrying it.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        ref: str | None = None,
        nack_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.nack_id = nack_id


class Reject(TetherError):
    """Raise from a hub handler to refuse a message with your own code and message.

    The client receives a ``nack`` carrying exactly this code and message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NackError(TetherError):
    """The hub refused a client message (a ``nack``)."""

    def __init__(self, code: str, message: str, *, id: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class SubscribeRefused(TetherError):
    """The hub refused a subscription (an ``error`` naming the topic in ``ref``)."""

    def __init__(self, topic: str, code: str, message: str) -> None:
        super().__init__(f"{topic}: {code}: {message}")
        self.topic = topic
        self.code = code
        self.message = message


class OutboxFull(TetherError):
    """The client's outbox is full and its policy is ``reject-new``."""


class MessageExpired(TetherError):
    """A queued client message passed its TTL before the hub acknowledged it."""


class MessageTooBig(TetherError):
    """A client message larger than the hub's ``max_frame_bytes`` (it would be closed 1009)."""


class MessageDropped(TetherError):
    """A queued client message was displaced by the outbox policy (drop-oldest / coalesce)."""


class ClientClosed(TetherError):
    """The client was closed; pending sends can no longer complete."""


class IllegalTransition(TetherError):
    """A client state machine move that the transition table does not allow."""
