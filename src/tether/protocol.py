"""The wire protocol (docs/protocol.md), as typed frames and a codec.

Pure: bytes in, typed frames out, and back. No I/O, no clocks. Every inbound
frame is validated against the schema by msgspec; anything else raises
:class:`~tether.errors.ProtocolError` and nothing but that.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1

TOPIC_PATTERN = r"^[A-Za-z0-9_.:/*\-]+$"
Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=TOPIC_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Epoch = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Offset = Annotated[int, msgspec.Meta(ge=0)]


class _Frame(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False):
    """Base of every frame: a JSON object whose ``type`` names it."""


# --- shared ---------------------------------------------------------------------------------


class Ping(_Frame, tag="ping"):
    ts: int


class Pong(_Frame, tag="pong"):
    ts: int


# --- client -> hub --------------------------------------------------------------------------


class Cursor(msgspec.Struct, kw_only=True):
    """A position in a topic: everything of ``epoch`` up to ``offset`` was delivered."""

    epoch: Epoch
    offset: Offset


class Subscribe(_Frame, tag="subscribe"):
    topic: Topic
    resume: Cursor | None = None


class Unsubscribe(_Frame, tag="unsubscribe"):
    topic: Topic


class Send(_Frame, tag="send"):
    id: MessageId
    event: EventName
    data: Any = None


class Publish(_Frame, tag="publish"):
    id: MessageId
    topic: Topic
    # Kept as raw JSON: the hub forwards it without decoding and re-encoding.
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


class Auth(_Frame, tag="auth"):
    """A fresh token for the live connection (see docs/protocol.md)."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]


ClientFrame = Subscribe | Unsubscribe | Send | Publish | Auth | Ping | Pong

# --- hub -> client --------------------------------------------------------------------------


class Limits(msgspec.Struct, kw_only=True):
    max_frame_bytes: int
    max_subscriptions: int
    dedup_window: int


class Welcome(_Frame, tag="welcome"):
    version: int
    session: str
    heartbeat_ms: int
    heartbeat_timeout_ms: int
    limits: Limits
    ts: int


class Gap(msgspec.Struct, kw_only=True):
    """Offsets ``start..end`` (inclusive) of ``epoch`` that will never be delivered.

    ``end`` is ``None`` when that epoch's history is gone: every offset from
    ``start`` on is lost and nobody can say where the epoch ended.
    """

    epoch: str
    start: int = msgspec.field(name="from")
    end: int | None = msgspec.field(name="to")


class Subscribed(_Frame, tag="subscribed"):
    topic: str
    epoch: str
    head: int
    recovered: bool
    missing: list[Gap] = msgspec.field(default_factory=list)


class Unsubscribed(_Frame, tag="unsubscribed"):
    topic: str


class Message(_Frame, tag="message"):
    topic: str
    epoch: str
    offset: int
    ts: int
    # Any JSON value; the hub passes a pre-encoded ``msgspec.Raw``.
    data: Any = None


class Ack(_Frame, tag="ack"):
    id: str
    result: Any = None


class Nack(_Frame, tag="nack"):
    id: str
    code: str
    message: str


class Error(_Frame, tag="error"):
    code: str
    message: str
    ref: str | None = None


class Authed(_Frame, tag="authed"):
    subject: str
    expires_at: int | None = None


ServerFrame = (
    Welcome | Subscribed | Unsubscribed | Message | Ack | Nack | Error | Authed | Ping | Pong
)

# --- codec ----------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)


class _RefProbe(msgspec.Struct):
    """Reads ``id``/``topic`` out of an invalid frame so the error can point at it."""

    id: Any = None
    topic: Any = None


_probe_decoder = msgspec.json.Decoder(_RefProbe)


def encode(frame: _Frame) -> bytes:
    """Serialise a frame to the UTF-8 JSON bytes of one text frame."""
    return _encoder.encode(frame)


def encode_data(value: Any) -> msgspec.Raw:
    """Encode an application payload once, for embedding in many frames."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"payload is not JSON-serialisable: {exc}") from None


def _ref_of(data: bytes | str) -> str | None:
    try:
        probe = _probe_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    for value in (probe.id, probe.topic):
        if isinstance(value, str) and len(value) <= 200:
            return value
    return None


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_FRAME, str(exc), ref=_ref_of(data)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "JSON nested too deeply") from None


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Decode a frame sent by a client (hub side). Raises only ``ProtocolError``."""
    frame: ClientFrame = _decode(_client_decoder, data)
    return frame


def decode_server_frame(data: bytes | str) -> ServerFrame:
    """Decode a frame sent by the hub (client side). Raises only ``ProtocolError``."""
    frame: ServerFrame = _decode(_server_decoder, data)
    return frame


def decode_json(data: bytes | str) -> Any:
    """Decode an arbitrary JSON document (e.g. a handler payload held as raw bytes)."""
    return msgspec.json.decode(data)
