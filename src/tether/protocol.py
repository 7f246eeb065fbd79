"""The wire protocol (docs/protocol.md), as typed frames and a codec.

Pure: bytes in, typed frames out, and back. No I/O, no clocks. Every inbound
frame is validated against the schema by msgspec; anything else raises
:class:`~tether.errors.ProtocolError` and nothing but that.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from .errors import ErrorCode, ProtocolError
from .payload import SURROGATE_MESSAGE, replace_surrogate_escapes

PROTOCOL_VERSION = 1

TOPIC_PATTERN = r"^[A-Za-z0-9_.:/*\-]+$"
Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=TOPIC_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Epoch = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Offset = Annotated[int, msgspec.Meta(ge=0)]
#: The largest integer a browser holds exactly (JSON numbers are doubles there).
MAX_COUNT = 2**53 - 1
#: A message count, bounded so that every client can hold it.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


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


class Subscribe(_Frame, tag="subscribe", omit_defaults=True):
    """Sent without its defaults (no ``resume``, ``rewind`` 0): what a hub that predates
    ``rewind`` receives is then exactly what it always did."""

    topic: Topic
    resume: Cursor | None = None
    #: Without ``resume``: replay the last ``rewind`` messages history holds, then go live.
    rewind: Count = 0


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


class Undeliverable(_Frame, tag="undeliverable"):
    """The client got this message but could not decode it, and stepped over it."""

    topic: Topic
    epoch: Epoch
    offset: Offset
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Auth(_Frame, tag="auth"):
    """A fresh token for the live connection (see docs/protocol.md)."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]


ClientFrame = Subscribe | Unsubscribe | Send | Publish | Auth | Undeliverable | Ping | Pong

# --- hub -> client --------------------------------------------------------------------------


class Limits(msgspec.Struct, kw_only=True):
    max_frame_bytes: int
    max_subscriptions: int
    dedup_window: int
    #: The hub's inbound token bucket: clients pace their frames to stay inside it.
    inbound_rate: float = 0.0
    inbound_burst: int = 0


class Welcome(_Frame, tag="welcome"):
    version: int
    session: str
    heartbeat_ms: int
    heartbeat_timeout_ms: int
    limits: Limits
    ts: int


class Gap(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Offsets ``start..end`` (inclusive) of ``epoch`` that will never be delivered.

    ``end`` is ``None`` when that epoch's history is gone: every offset from
    ``start`` on is lost and nobody can say where the epoch ended. ``reason`` is
    ``None`` when history no longer holds them, :data:`UNDELIVERABLE` when they
    arrived but this client could not decode them.
    """

    epoch: str
    start: int = msgspec.field(name="from")
    end: int | None = msgspec.field(name="to")
    reason: str | None = None


#: ``Gap.reason`` of a message that arrived but could not be decoded (and was stepped over).
UNDELIVERABLE = "undeliverable"


class Subscribed(_Frame, tag="subscribed"):
    topic: str
    epoch: str
    head: int
    recovered: bool
    missing: list[Gap] = msgspec.field(default_factory=list)
    #: Messages replayed for ``rewind``: offsets ``head - rewound + 1 .. head``.
    rewound: int = 0


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
    #: Set on refusals that are not final (``rate_limited``, ``overloaded``): retry then.
    retry_after_ms: int | None = None


class Error(_Frame, tag="error"):
    code: str
    message: str
    ref: str | None = None
    #: Set on refusals that are not final (``rate_limited``): re-send the frame then.
    retry_after_ms: int | None = None


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


#: The start of every ``message`` frame the hub writes: compact, fields in this order
#: (docs/protocol.md, "Undecodable messages"). It names the offset even when ``data``
#: can't be parsed, so a client can step over that one message instead of failing.
_topic_decoder = msgspec.json.Decoder(Topic)


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a legal topic name, else raise ``ValueError``."""
    try:
        return _topic_decoder.decode(msgspec.json.encode(topic))
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid topic {topic!r}: {exc}") from None


_ENVELOPE = re.compile(
    rb'^\{"type":"message","topic":"([A-Za-z0-9_.:/*\-]{1,200})","epoch":"([^"\\]{1,64})",'
    rb'"offset":([1-9][0-9]{0,15}),'
)


def message_envelope(data: bytes | str) -> tuple[str, str, int] | None:
    """``(topic, epoch, offset)`` of a ``message`` frame whose payload failed to decode."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    match = _ENVELOPE.match(raw)
    if match is None:
        return None
    topic, epoch, offset = match.groups()
    try:
        return topic.decode(), epoch.decode(), int(offset)
    except UnicodeDecodeError:
        return None  # an epoch that is not even UTF-8: not a frame from a Tether hub


class _RefProbe(msgspec.Struct):
    """Reads ``type``/``id``/``topic`` out of an invalid frame so the answer can name it."""

    type: Any = None
    id: Any = None
    topic: Any = None


_probe_decoder = msgspec.json.Decoder(_RefProbe)
#: Frames answered with ``ack``/``nack``: an invalid one is nacked, so the sender's outbox
#: resolves it instead of retrying a frame that can never succeed.
_ACKED_TYPES = frozenset({"send", "publish"})


def encode(frame: _Frame) -> bytes:
    """Serialise a frame to the UTF-8 JSON bytes of one text frame."""
    return _encoder.encode(frame)


def encode_data(value: Any) -> msgspec.Raw:
    """Encode an application payload once, for embedding in many frames."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"payload is not JSON-serialisable: {exc}") from None


def frame_names(data: bytes | str) -> tuple[str | None, str | None]:
    """``(ref, nack_id)`` of a frame the hub refuses, when they can be read: ``ref`` is
    its ``id`` or ``topic``; ``nack_id`` its ``id`` if it is a ``send``/``publish``
    (answered with a ``nack``, so the sender's outbox hears about it)."""
    try:
        probe = _probe_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None, None
    ref = next((v for v in (probe.id, probe.topic) if isinstance(v, str) and len(v) <= 200), None)
    nack_id = None
    acked = isinstance(probe.type, str) and probe.type in _ACKED_TYPES
    if acked and isinstance(probe.id, str) and 1 <= len(probe.id) <= 64:
        nack_id = probe.id
    return ref, nack_id


def _refusal(code: ErrorCode, message: str, data: bytes | str) -> ProtocolError:
    """A :class:`ProtocolError` naming the frame (``ref``, ``nack_id``) when it can be read."""
    ref, nack_id = frame_names(data)
    return ProtocolError(code, message, ref=ref, nack_id=nack_id)


def decode_as(decoder: msgspec.json.Decoder[Any], data: bytes | str) -> Any:
    """Decode ``data`` with ``decoder``, raising only :class:`ProtocolError` (naming the
    frame where it can be read). Used for WebSocket frames and ``POST /publish`` bodies."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _refusal(ErrorCode.INVALID_FRAME, str(exc), data) from None
    except msgspec.DecodeError as exc:
        sanitized = replace_surrogate_escapes(data)
        if sanitized is not None:
            try:
                frame = decoder.decode(sanitized)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                pass  # broken for other reasons too
            else:
                # In a published payload (kept raw) it breaks the payload rule; anywhere
                # else it is a malformed field.
                code = ErrorCode.INVALID_FRAME
                if isinstance(getattr(frame, "data", None), msgspec.Raw):
                    code = ErrorCode.INVALID_PAYLOAD
                raise _refusal(code, f"frame {SURROGATE_MESSAGE}", sanitized) from None
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "JSON nested too deeply") from None
    except UnicodeDecodeError:
        # msgspec raises this, not DecodeError, for invalid UTF-8 inside a string.
        raise _refusal(ErrorCode.INVALID_JSON, "frame is not valid UTF-8", data) from None


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Decode a frame sent by a client (hub side). Raises only ``ProtocolError``."""
    frame: ClientFrame = decode_as(_client_decoder, data)
    return frame


def decode_server_frame(data: bytes | str) -> ServerFrame:
    """Decode a frame sent by the hub (client side). Raises only ``ProtocolError``."""
    frame: ServerFrame = decode_as(_server_decoder, data)
    return frame


def decode_json(data: bytes | str) -> Any:
    """Decode an arbitrary JSON document (e.g. a handler payload held as raw bytes)."""
    return msgspec.json.decode(data)
