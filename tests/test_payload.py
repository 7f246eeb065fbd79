"""The published-payload rule (tether.payload), against an independent reference model."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.payload import (
    MAX_SAFE_INTEGER,
    InvalidPayload,
    check_payload,
    encode_payload,
)

DEPTH = 8
LIMIT = 65_536


def check(raw: bytes, *, max_depth: int = DEPTH, max_bytes: int = LIMIT) -> None:
    check_payload(raw, max_depth=max_depth, max_bytes=max_bytes)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"s": "\xff"}', "UTF-8"),  # issue 13.1: a byte that is never UTF-8
        (b'["\xc3"]', "UTF-8"),  # a truncated two-byte sequence
        (b'["\\ud800"]', "surrogate"),  # JavaScript takes it, Python's decoder does not
        (b'["\\udc00x"]', "surrogate"),
        (b"[1e400]", "number"),  # issue 13.2: Infinity to a browser, an error to Python
        (b"[-1e400]", "number"),
        (b"[" + b"9" * 5000 + b"]", "number"),  # issue 13.2
        (b"[9007199254740992]", "integer"),  # 2**53: JSON.parse can't tell it from 2**53 + 1
        (b"[-9007199254740992]", "integer"),
        (b"[18446744073709551616]", "integer"),
        (b"[NaN]", "JSON"),
        (b"[1,]", "JSON"),
        (b"[" * 9 + b"]" * 9, "nested"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
    ],
)
def test_refused_payloads_say_why(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check(raw)
    assert words.lower() in info.value.message.lower()
    assert info.value.code == "invalid_payload"


@pytest.mark.parametrize(
    "raw",
    [
        b"null",
        b'"\\ud83d\\ude00"',  # an escaped surrogate *pair* is a valid character
        '"naïve ✓ 😀"'.encode(),
        b"[9007199254740991, -9007199254740991]",
        b"[1e308, 5e-324, 1e-400, -0, 0.1]",  # 1e-400 is 0 to every decoder alike
        b'{"a": 1, "a": 2}',  # duplicate keys: the last one wins everywhere
        b"[" * 8 + b"]" * 8,
        b'["[[[[[[[[[[[[[[[[[[["]',  # brackets in a string are not nesting
        b'"12345678901234567890"',  # digits in a string are not a number
    ],
)
def test_accepted_payloads(raw: bytes) -> None:
    check(raw)


def test_size_limit() -> None:
    check(b'"' + b"x" * 98 + b'"', max_bytes=100)
    with pytest.raises(InvalidPayload, match="101 bytes"):
        check(b'"' + b"x" * 99 + b'"', max_bytes=100)


@dataclasses.dataclass
class Reading:
    value: float


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (math.inf, "Infinity"),
        ({"nested": [1, {"x": math.nan}]}, "NaN"),
        (Reading(value=-math.inf), "Infinity"),  # hidden inside an object msgspec encodes
        ("\ud800", "surrogate"),
        (2**53, "integer"),
        (-(2**70), "integer"),
        ([[[[[[[[[[]]]]]]]]]], "nested"),
    ],
)
def test_encode_payload_refuses_what_would_change_or_break(value: Any, words: str) -> None:
    with pytest.raises(InvalidPayload, match=words):
        encode_payload(value, max_depth=DEPTH, max_bytes=LIMIT)


def test_encode_payload_keeps_null_and_rejects_unencodable_types() -> None:
    assert bytes(encode_payload({"a": None, "b": 1.5})) == b'{"a":null,"b":1.5}'
    assert bytes(encode_payload(Reading(value=2.0))) == b'{"value":2.0}'
    with pytest.raises(TypeError):
        encode_payload(object())


# --- property: the rule equals a reference model built on the standard library -----------


def reference_verdict(raw: bytes, *, max_depth: int) -> bool:
    """Would both clients decode ``raw`` to the same value? Decided without msgspec.

    Two views of the document: every pair of every object (a decoder must get through
    shadowed duplicate keys too, so a value no client can decode fails there), and the
    value a decoder keeps (the last duplicate wins), which is what must agree.
    """
    try:
        text = raw.decode("utf-8")  # strict: invalid bytes and encoded surrogates fail
        pairs = json.loads(text, parse_constant=_refuse, object_pairs_hook=Pairs)
        kept = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False  # includes integers past Python's 4,300-digit limit
    stack = [pairs]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and _has_surrogate(item):
            return False  # an escaped lone surrogate
        if isinstance(item, float) and not math.isfinite(item):
            return False  # 1e400: inf to Python's json, Infinity to JavaScript
        if isinstance(item, Pairs):
            stack.extend(k for k, _ in item)
            stack.extend(v for _, v in item)
        elif isinstance(item, list):
            stack.extend(item)
    nested = [(kept, 0)]
    while nested:
        item, depth = nested.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_SAFE_INTEGER:
                return False
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return False
            values = item.values() if isinstance(item, dict) else item
            nested.extend((v, depth + 1) for v in values)
    return True


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


class Pairs(list[tuple[str, Any]]):
    """A JSON object as the list of its pairs, in order."""


def _refuse(literal: str) -> Any:
    raise ValueError(literal)


# Hostile JSON text: valid values with the pieces that break clients spliced in.
atoms = st.one_of(
    st.sampled_from(
        [
            b"null",
            b"true",
            b"0",
            b"-0",
            b"1e400",
            b"-1e400",
            b"1e-400",
            b"9007199254740991",
            b"9007199254740992",
            b"-9007199254740993",
            b"1" * 40,
            b"0.1",
            b'"\\ud800"',
            b'"\\ud83d\\ude00"',
            b'"\xff"',
            b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 bytes (CESU-style)
            b'"\xc3\xa9"',
            b"NaN",
            b"Infinity",
        ]
    ),
    st.integers().map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: json.dumps(f).encode()),
    st.text(max_size=8).map(lambda s: json.dumps(s).encode()),
)
documents = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: b"[" + b",".join(items) + b"]"),
        st.lists(st.tuples(atoms, inner), max_size=3).map(
            lambda pairs: (
                b"{" + b",".join(b'"k' + k[:3].strip(b'"') + b'":' + v for k, v in pairs) + b"}"
            )
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(documents, st.integers(min_value=0, max_value=6))
def test_rule_matches_the_reference_model(raw: bytes, max_depth: int) -> None:
    expected = reference_verdict(raw, max_depth=max_depth)
    try:
        check(raw, max_depth=max_depth)
    except InvalidPayload:
        assert not expected, raw
    else:
        assert expected, raw
        # Accepted means decoded alike: msgspec (the Python client) equals the reference.
        assert msgspec.json.decode(raw) == json.loads(raw)


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=10,
    )
)
def test_encode_payload_matches_the_reference_model(value: Any) -> None:
    try:
        raw = bytes(encode_payload(value, max_depth=DEPTH, max_bytes=LIMIT))
    except InvalidPayload:
        assert not _value_ok(value)
    else:
        assert _value_ok(value)
        assert reference_verdict(raw, max_depth=DEPTH)
        assert json.loads(raw) == value


def _value_ok(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return reference_verdict(text.encode("utf-8", "surrogatepass"), max_depth=DEPTH)
