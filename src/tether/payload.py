"""The published-payload rule: only data every official client decodes to the same value.

Pure: bytes or values in, a verdict out. A published payload is stored in history
and fanned out to every subscriber, so one that a client cannot take would break
that client for as long as it stays in history (and a client that fails the
connection on it would reconnect into the same replay for ever). The hub checks
every payload where it enters, before it gets an offset; see docs/protocol.md,
"Published payloads".

The rule, and why each part exists:

* **UTF-8 JSON, no unpaired surrogates.** WebSocket text frames must be UTF-8
  (browsers fail the connection with 1007 otherwise) and ``\\ud800`` alone is a
  string JavaScript accepts but Python's decoder refuses.
* **Integers within ±(2**53 - 1)** (``Number.MAX_SAFE_INTEGER``): beyond it
  ``JSON.parse`` rounds them, so the browser would see another number than the
  Python client.
* **Other numbers finite as IEEE-754 doubles**: ``1e400`` is Infinity to a browser
  and an error to Python; ``NaN`` and ``Infinity`` are not JSON at all (and an
  encoder that writes them as ``null`` would change the data silently).
* **Nesting within** ``max_payload_depth`` and **size within** ``max_frame_bytes``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from .errors import ErrorCode, TetherError

#: ``Number.MAX_SAFE_INTEGER``: the largest integer JavaScript represents exactly.
MAX_SAFE_INTEGER = 2**53 - 1

_encoder = msgspec.json.Encoder()
# A run of 16 digits is the shortest text that can spell an integer past 2**53 - 1
# (16 digits); without one every integer in the payload is safe and the value walk
# can be skipped.
_LONG_DIGITS = re.compile(rb"\d{16}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class InvalidPayload(TetherError, ValueError):
    """A published payload that not every official client could decode (``invalid_payload``)."""

    code = ErrorCode.INVALID_PAYLOAD

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: No depth or size limit: for clients, which check the value rule and leave limits to the hub.
UNLIMITED = 2**62


def check_payload(raw: bytes, *, max_depth: int, max_bytes: int, trusted: bool = False) -> None:
    """Raise :class:`InvalidPayload` unless ``raw`` (JSON text) meets the rule.

    ``trusted`` says ``raw`` came from Tether's own encoder (valid UTF-8 JSON with
    finite numbers): then only integer range and depth are left to check.
    """
    if len(raw) > max_bytes:
        raise InvalidPayload(f"payload is {len(raw)} bytes; at most {max_bytes} are allowed")
    value: Any = _UNDECODED
    if not trusted:
        value = _decode(raw)
    nesting = raw.count(b"[") + raw.count(b"{")  # an upper bound: brackets in strings count too
    if nesting <= max_depth and _LONG_DIGITS.search(raw) is None:
        return  # no container chain can be deeper, no integer can be unsafe
    if value is _UNDECODED:
        value = _decode(raw)
    _check_value(value, max_depth=max_depth)


def encode_payload(
    value: Any, *, max_depth: int = UNLIMITED, max_bytes: int = UNLIMITED
) -> msgspec.Raw:
    """Encode an application value as a payload, or raise why it can't be published.

    ``TypeError`` for a value JSON cannot hold at all (an object msgspec does not
    know); :class:`InvalidPayload` for one that breaks the rule.
    """
    try:
        raw = _encoder.encode(value)
    except UnicodeEncodeError:
        raise InvalidPayload(
            "payload holds a string with an unpaired surrogate, which is not valid UTF-8"
        ) from None
    except OverflowError:
        raise InvalidPayload(_unsafe_integer_message()) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload is not JSON-serialisable: {exc}") from None
    # msgspec writes NaN and ±Infinity as null, so they can only hide behind a "null".
    if b"null" in raw and _has_non_finite(msgspec.to_builtins(value)):
        raise InvalidPayload("payload holds NaN or Infinity, which JSON cannot represent")
    check_payload(raw, max_depth=max_depth, max_bytes=max_bytes, trusted=True)
    return msgspec.Raw(raw)


_UNDECODED: Any = object()

#: What a caller may say about an unpaired surrogate escape, wherever it was found.
SURROGATE_MESSAGE = (
    "holds an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF), which is not "
    "valid Unicode and not every client can decode"
)


def replace_surrogate_escapes(data: bytes | str) -> bytes | None:
    """``data`` with every ``\\uD800``-``\\uDFFF`` escape replaced by U+FFFD; ``None``
    if it holds none. For reading the rest of a frame that failed to decode only
    because of them (to refuse it precisely, naming its id)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _SURROGATE_ESCAPE.search(raw) is None:
        return None
    return _SURROGATE_ESCAPE.sub(rb"\\ufffd", raw)


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except UnicodeDecodeError:
        raise InvalidPayload("payload is not valid UTF-8") from None
    except msgspec.ValidationError as exc:
        # msgspec's only validation of untyped JSON is numeric range (e.g. 1e400).
        raise InvalidPayload(
            f"payload holds a number no client can decode exactly ({exc}); integers must be "
            f"within ±{MAX_SAFE_INTEGER} and other numbers finite doubles"
        ) from None
    except msgspec.DecodeError as exc:
        sanitized = replace_surrogate_escapes(raw)
        if sanitized is not None and _decodes(sanitized):
            raise InvalidPayload(f"payload {SURROGATE_MESSAGE}") from None
        raise InvalidPayload(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidPayload("payload is nested too deeply") from None


def _decodes(raw: bytes) -> bool:
    try:
        msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return False
    return True


def _check_value(value: Any, *, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, float | str):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise InvalidPayload(_unsafe_integer_message())
            continue
        if depth >= max_depth:
            raise InvalidPayload(f"payload is nested deeper than {max_depth} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _unsafe_integer_message() -> str:
    return (
        f"payload holds an integer outside ±{MAX_SAFE_INTEGER} (2**53 - 1), which browsers "
        "would round; send it as a string"
    )
