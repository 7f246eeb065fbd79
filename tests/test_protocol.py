from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.errors import ErrorCode, ProtocolError
from tether.protocol import (
    Cursor,
    Gap,
    Message,
    Publish,
    Send,
    Subscribe,
    Subscribed,
    decode_client_frame,
    decode_server_frame,
    encode,
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        decode_client_frame(data)
    except ProtocolError as exc:
        assert exc.code in {ErrorCode.INVALID_JSON, ErrorCode.INVALID_FRAME}
    try:
        decode_server_frame(data)
    except ProtocolError as exc:
        assert exc.message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "topic", "id", "event", "data", "resume"]), json_values
    )
)
def test_arbitrary_json_objects_raise_only_protocol_error(obj: dict[str, object]) -> None:
    try:
        decode_client_frame(json.dumps(obj))
    except ProtocolError as exc:
        assert exc.code == ErrorCode.INVALID_FRAME


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", ErrorCode.INVALID_JSON),
        (b"\xff\xfe", ErrorCode.INVALID_JSON),
        (b"[]", ErrorCode.INVALID_FRAME),
        (b'{"type":"launch"}', ErrorCode.INVALID_FRAME),
        (b'{"type":"subscribe","topic":5}', ErrorCode.INVALID_FRAME),
        (b'{"type":"subscribe","topic":"a b"}', ErrorCode.INVALID_FRAME),
        (b'{"type":"subscribe","topic":""}', ErrorCode.INVALID_FRAME),
        (
            b'{"type":"subscribe","topic":"t","resume":{"epoch":"e","offset":-1}}',
            ErrorCode.INVALID_FRAME,
        ),
        (b'{"type":"subscribe","topic":"t","rewind":-1}', ErrorCode.INVALID_FRAME),
        (b'{"type":"subscribe","topic":"t","rewind":9007199254740992}', ErrorCode.INVALID_FRAME),
        (b'{"type":"subscribe","topic":"t","rewind":"3"}', ErrorCode.INVALID_FRAME),
        (b'{"type":"send","id":"","event":"x"}', ErrorCode.INVALID_FRAME),
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.INVALID_FRAME),
        (
            b'{"type":"send","id":"1","event":"e","data":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            ErrorCode.INVALID_JSON,
        ),
    ],
)
def test_bad_frames_get_specific_codes(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(raw)
    assert info.value.code == code
    assert info.value.message


def test_error_points_at_the_offending_frame() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(b'{"type":"subscribe","topic":"bad topic!"}')
    assert info.value.ref == "bad topic!"


def test_client_frames_round_trip() -> None:
    frames = [
        Subscribe(topic="prices.eu", resume=Cursor(epoch="e1", offset=41)),
        Subscribe(topic="x"),
        Send(id="a-1", event="chat.post", data={"text": "hi"}),
    ]
    for frame in frames:
        assert decode_client_frame(encode(frame)) == frame
    publish = decode_client_frame(
        encode(Publish(id="a-2", topic="t", data=msgspec.Raw(b'{"k":[1,2]}')))
    )
    assert isinstance(publish, Publish)
    assert bytes(publish.data) == b'{"k":[1,2]}'


def test_gap_uses_from_and_to_on_the_wire() -> None:
    reply = Subscribed(
        topic="t",
        epoch="e2",
        head=9,
        recovered=False,
        missing=[Gap(epoch="e1", start=42, end=None)],
    )
    wire = json.loads(encode(reply))
    assert wire["missing"] == [{"epoch": "e1", "from": 42, "to": None}]
    assert decode_server_frame(encode(reply)) == reply


def test_message_embeds_pre_encoded_data_verbatim() -> None:
    frame = encode(Message(topic="t", epoch="e", offset=3, ts=1, data=msgspec.Raw(b'{"a":1}')))
    assert json.loads(frame) == {
        "type": "message",
        "topic": "t",
        "epoch": "e",
        "offset": 3,
        "ts": 1,
        "data": {"a": 1},
    }
