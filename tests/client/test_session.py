from __future__ import annotations

import json

import msgspec
import pytest

from tether.client.session import (
    ClientSession,
    Delivery,
    Resolved,
    Resync,
    ServerError,
    SubscriptionConfirmed,
    SubscriptionRefused,
    Welcomed,
)
from tether.config import OutboxPolicy
from tether.outbox import Outbox
from tether.protocol import (
    Ack,
    Cursor,
    Error,
    Gap,
    Limits,
    Message,
    Nack,
    Ping,
    Pong,
    Subscribed,
    Welcome,
    encode,
)


def unconnected() -> ClientSession:
    return ClientSession(
        outbox=Outbox(max_size=10, policy=OutboxPolicy.REJECT_NEW),
        heartbeat_interval=10,
        heartbeat_timeout=5,
        id_prefix="p",
    )


def session() -> ClientSession:
    s = unconnected()
    s.subscribe("t")
    s.connection_opened(now=0)
    return s


def msg(offset: int, epoch: str = "E", topic: str = "t") -> bytes:
    return encode(
        Message(
            topic=topic,
            epoch=epoch,
            offset=offset,
            ts=0,
            data=msgspec.Raw(json.dumps({"o": offset}).encode()),
        )
    )


def subscribed(head: int, *, epoch: str = "E", missing: list[Gap] | None = None) -> bytes:
    return encode(
        Subscribed(topic="t", epoch=epoch, head=head, recovered=not missing, missing=missing or [])
    )


def deliveries(events: list[object]) -> list[int]:
    return [e.offset for e in events if isinstance(e, Delivery)]


def test_fresh_subscribe_starts_at_head_then_delivers_next_offsets() -> None:
    s = session()
    events, _ = s.receive(subscribed(5), now=1)
    assert events == [SubscriptionConfirmed("t", True, Cursor(epoch="E", offset=5))]
    assert s.cursor("t") == Cursor(epoch="E", offset=5)
    events, _ = s.receive(msg(6), now=1)
    assert deliveries(events) == [6]
    assert events[0] == Delivery("t", "E", 6, 0, {"o": 6}, False)


def test_duplicates_are_dropped_never_delivered_twice() -> None:
    s = session()
    s.receive(subscribed(0), now=0)
    got = []
    for offset in (1, 2, 2, 1, 3):
        events, _ = s.receive(msg(offset), now=0)
        got += deliveries(events)
    assert got == [1, 2, 3]
    assert s.counters.duplicates_dropped == 2


def test_live_gap_is_reported_before_the_message() -> None:
    s = session()
    s.receive(subscribed(0), now=0)
    s.receive(msg(1), now=0)
    events, _ = s.receive(msg(4), now=0)
    assert events[0] == Resync("t", [Gap(epoch="E", start=2, end=3)], Cursor(epoch="E", offset=3))
    assert deliveries(events) == [4]


def test_epoch_change_in_live_stream_is_reported() -> None:
    s = session()
    s.receive(subscribed(0), now=0)
    s.receive(msg(1), now=0)
    events, _ = s.receive(msg(3, epoch="F"), now=0)
    assert events[0] == Resync(
        "t",
        [Gap(epoch="E", start=2, end=None), Gap(epoch="F", start=1, end=2)],
        Cursor(epoch="F", offset=2),
    )
    assert s.cursor("t") == Cursor(epoch="F", offset=3)


def test_resume_frames_carry_cursor_and_replay_counts_as_recovered() -> None:
    s = session()
    s.receive(subscribed(3), now=0)
    s.receive(msg(4), now=0)
    s.connection_lost()
    frames = s.connection_opened(now=1)
    assert json.loads(frames[0]) == {
        "type": "subscribe",
        "topic": "t",
        "resume": {"epoch": "E", "offset": 4},
    }
    s.receive(subscribed(6), now=1)
    events5, _ = s.receive(msg(5), now=1)
    events7, _ = s.receive(msg(7), now=1)
    assert [e.recovered for e in events5 + events7 if isinstance(e, Delivery)] == [True, False]
    assert s.counters.messages_recovered == 1


def test_subscribed_with_gap_steps_cursor_over_it_and_reports() -> None:
    s = session()
    s.receive(subscribed(3), now=0)
    s.connection_lost()
    s.connection_opened(now=1)
    events, _ = s.receive(subscribed(20, missing=[Gap(epoch="E", start=4, end=15)]), now=1)
    assert Resync("t", [Gap(epoch="E", start=4, end=15)], Cursor(epoch="E", offset=15)) in events
    assert s.cursor("t") == Cursor(epoch="E", offset=15)
    events, _ = s.receive(msg(16), now=1)
    assert deliveries(events) == [16]
    assert not any(isinstance(e, Resync) for e in events)


def test_restart_gap_moves_cursor_to_new_epoch() -> None:
    s = session()
    s.receive(subscribed(41), now=0)
    s.connection_lost()
    s.connection_opened(now=1)
    s.receive(subscribed(3, epoch="F", missing=[Gap(epoch="E", start=42, end=None)]), now=1)
    assert s.cursor("t") == Cursor(epoch="F", offset=0)
    got = []
    for offset in (1, 2, 3):
        events, _ = s.receive(msg(offset, epoch="F"), now=1)
        got += deliveries(events)
    assert got == [1, 2, 3]


def test_welcome_sets_heartbeat_and_ping_is_answered() -> None:
    s = session()
    welcome = Welcome(
        version=1,
        session="s",
        heartbeat_ms=2000,
        heartbeat_timeout_ms=1000,
        limits=Limits(max_frame_bytes=1, max_subscriptions=1, dedup_window=1),
        ts=0,
    )
    events, _ = s.receive(encode(welcome), now=0)
    assert isinstance(events[0], Welcomed)
    assert (s.heartbeat_interval, s.heartbeat_timeout) == (2.0, 1.0)
    _, replies = s.receive(encode(Ping(ts=77)), now=0)
    assert json.loads(replies[0]) == {"type": "pong", "ts": 77}


def test_poll_pings_when_due_and_declares_death_past_deadline() -> None:
    s = session()  # interval 10, timeout 5, opened at 0
    assert s.poll(now=5).frames == []
    assert json.loads(s.poll(now=10).frames[0])["type"] == "ping"
    s.receive(msg(1), now=12)  # any frame counts as a sign of life
    assert not s.poll(now=26).dead
    assert s.poll(now=27.1).dead


def test_acks_and_nacks_resolve_outbox_items_once() -> None:
    s = session()
    item = s.make_send("e", {"x": 1}, expires_at=99)
    s.outbox.add(item)
    assert s.due(now=0) == ([item.frame], None)
    events, _ = s.receive(encode(Ack(id=item.id, result=7)), now=0)
    assert events == [Resolved(item, True, result=7)]
    events, _ = s.receive(encode(Ack(id=item.id, result=7)), now=0)
    assert events == []  # a second answer to the same id resolves nothing
    other = s.make_send("e", None, expires_at=99)
    s.outbox.add(other)
    events, _ = s.receive(encode(Nack(id=other.id, code="no_handler", message="m")), now=0)
    assert events == [Resolved(other, False, code="no_handler", message="m")]


def test_garbage_from_hub_is_surfaced_not_raised() -> None:
    s = session()
    events, _ = s.receive(b"{nope", now=0)
    assert isinstance(events[0], ServerError)
    assert s.counters.protocol_errors == 1


def test_messages_for_unknown_topics_are_ignored() -> None:
    s = session()
    events, _ = s.receive(msg(1, topic="other"), now=0)
    assert events == []


def raw_msg(offset: int, data: bytes, *, epoch: str = "E") -> bytes:
    """A message frame exactly as a (broken or older) hub might write it."""
    return (
        b'{"type":"message","topic":"t","epoch":"'
        + epoch.encode()
        + b'","offset":'
        + str(offset).encode()
        + b',"ts":0,"data":'
        + data
        + b"}"
    )


def test_an_undecodable_message_is_reported_as_a_gap_with_a_reason_and_stepped_over() -> None:
    # Issue 13.1/13.2: invalid UTF-8 raised out of receive() and killed the reader; a
    # number out of range was dropped and later misreported as history loss.
    s = session()
    s.receive(subscribed(1), now=0)
    for offset, data in ((2, b'["\xff"]'), (3, b"[1e400]"), (4, b"[" + b"9" * 5000 + b"]")):
        events, replies = s.receive(raw_msg(offset, data), now=0)
        assert events == [
            Resync(
                "t",
                [Gap(epoch="E", start=offset, end=offset, reason="undeliverable")],
                Cursor(epoch="E", offset=offset),
            )
        ]
        report = json.loads(replies[0])
        assert report["type"] == "undeliverable"
        assert (report["topic"], report["epoch"], report["offset"]) == ("t", "E", offset)
        assert report["reason"]
    # The next message is delivered with no further gap, and a replay of a stepped-over
    # offset is a duplicate, not a new report (no loop).
    events, _ = s.receive(msg(5), now=0)
    assert [type(e) for e in events] == [Delivery]
    assert s.receive(raw_msg(3, b"[1e400]"), now=0) == ([], [])
    assert s.counters.undeliverable == 3


def test_an_undecodable_message_after_a_gap_reports_both() -> None:
    s = session()
    s.receive(subscribed(1), now=0)
    events, _ = s.receive(raw_msg(4, b'"\xff"'), now=0)
    assert events == [
        Resync(
            "t",
            [
                Gap(epoch="E", start=2, end=3),
                Gap(epoch="E", start=4, end=4, reason="undeliverable"),
            ],
            Cursor(epoch="E", offset=4),
        )
    ]


def test_invalid_utf8_outside_a_message_is_an_error_event_not_an_exception() -> None:
    s = session()
    events, replies = s.receive(b'{"type":"error","code":"x","message":"\xff"}', now=0)
    assert [type(e) for e in events] == [ServerError]
    assert replies == []


def error(code: str, *, ref: str | None = "t", retry_after_ms: int | None = None) -> bytes:
    return encode(Error(code=code, message="no", ref=ref, retry_after_ms=retry_after_ms))


def test_a_final_error_naming_a_topic_drops_it_so_reconnects_do_not_resubscribe() -> None:
    s = session()
    events, _ = s.receive(error("forbidden"), now=1)
    assert events == [SubscriptionRefused("t", "forbidden", "no")]
    s.connection_lost()
    assert s.connection_opened(now=2) == []  # nothing to restore
    assert s.cursor("t") is None


def test_a_retryable_error_naming_a_topic_keeps_it_and_resends_the_subscribe() -> None:
    s = session()
    events, _ = s.receive(error("rate_limited", retry_after_ms=100), now=1)
    assert events == []
    frames = s.due(now=2)[0]
    assert len(frames) == 1 and b'"subscribe"' in frames[0]


def test_an_error_naming_no_tracked_topic_is_a_server_error() -> None:
    s = session()
    events, _ = s.receive(error("forbidden", ref="other"), now=1)
    assert events == [ServerError("forbidden", "no", "other")]


def test_a_late_check_probes_before_declaring_the_link_dead() -> None:
    """A process that slept past the deadline: its own silence, not the hub's."""
    s = session()  # interval 10, timeout 5, opened at 0
    assert s.poll(now=10).wake_at == 15  # the deadline: 0 + 10 + 5
    woke = s.poll(now=100)  # 85 s late (a laptop lid)
    assert not woke.dead and json.loads(woke.frames[0])["type"] == "ping"
    assert woke.wake_at == 105
    s.receive(encode(Pong(ts=100_000)), now=100.2)  # the hub was there all along
    alive = s.poll(now=105)
    assert not alive.dead and alive.wake_at == min(110, 100.2 + 15)


def test_a_late_check_whose_probe_goes_unanswered_declares_the_link_dead() -> None:
    s = session()
    s.poll(now=10)
    assert not s.poll(now=100).dead
    assert not s.poll(now=104.9).dead
    assert s.poll(now=105).dead


def test_an_on_time_check_past_the_deadline_does_not_wait_for_a_probe() -> None:
    s = session()
    assert s.poll(now=10).wake_at == 15
    assert s.poll(now=15.5).dead  # on time (0.5 s after it asked): the hub went silent


def test_a_rewind_is_asked_for_until_the_hub_gives_a_cursor_then_resumes() -> None:
    s = unconnected()
    s.subscribe("t", rewind=2)
    frames = s.connection_opened(now=0)
    assert json.loads(frames[0]) == {"type": "subscribe", "topic": "t", "rewind": 2}
    s.connection_lost()  # before any answer: still no cursor, so it asks again
    frames = s.connection_opened(now=1)
    assert json.loads(frames[0]) == {"type": "subscribe", "topic": "t", "rewind": 2}
    reply = Subscribed(topic="t", epoch="E", head=9, recovered=True, rewound=2)
    events, _ = s.receive(encode(reply), now=1)
    assert events == [SubscriptionConfirmed("t", True, Cursor(epoch="E", offset=7))]
    got = []
    for offset in (8, 9, 10):
        events, _ = s.receive(msg(offset), now=1)
        got += [(e.offset, e.recovered) for e in events if isinstance(e, Delivery)]
    # Never missed, so not "recovered": delivered like the live message after them.
    assert got == [(8, False), (9, False), (10, False)]
    assert s.counters.messages_recovered == 0
    s.connection_lost()
    frames = s.connection_opened(now=2)
    assert json.loads(frames[0]) == {
        "type": "subscribe",
        "topic": "t",
        "resume": {"epoch": "E", "offset": 10},
    }


def test_a_hub_that_predates_rewind_just_starts_live() -> None:
    s = unconnected()
    s.subscribe("t", rewind=3)
    s.connection_opened(now=0)
    old_reply = b'{"type":"subscribed","topic":"t","epoch":"E","head":9,"recovered":true}'
    events, _ = s.receive(old_reply, now=0)
    assert events == [SubscriptionConfirmed("t", True, Cursor(epoch="E", offset=9))]


def test_a_rewind_no_hub_would_accept_is_refused_at_the_call() -> None:
    s = unconnected()
    for bad in (-1, 2**53):
        with pytest.raises(ValueError, match="rewind"):
            s.subscribe("t", rewind=bad)
    frames = s.connection_opened(now=0)
    assert not [f for f in frames if json.loads(f)["type"] == "subscribe"]  # nothing tracked
