from __future__ import annotations

import json

from tether.config import HubConfig
from tether.server.session import DoSend, DoSubscribe, DoUnsubscribe, Reply, ServerSession


def make(**overrides: object) -> ServerSession:
    return ServerSession(session_id="s-1", config=HubConfig(**overrides), now=0)  # type: ignore[arg-type]


def reply_json(command: object) -> dict[str, object]:
    assert isinstance(command, Reply)
    result: dict[str, object] = json.loads(command.frame)
    return result


def test_welcome_states_version_heartbeat_and_limits() -> None:
    welcome = json.loads(make(heartbeat_interval=2, heartbeat_timeout=1).welcome(wall_ms=5))
    assert welcome["type"] == "welcome" and welcome["version"] == 1
    assert welcome["heartbeat_ms"] == 2000 and welcome["heartbeat_timeout_ms"] == 1000
    assert welcome["limits"]["max_subscriptions"] == 100


def test_bad_frame_gets_error_and_changes_nothing() -> None:
    s = make()
    (command,) = s.receive('{"type":"subscribe","topic":7}', now=1)
    assert reply_json(command)["code"] == "invalid_frame"
    assert s.topics == set()
    assert s.last_received == 1


def test_binary_frames_are_refused_with_a_code() -> None:
    (command,) = make().receive_binary(now=0)
    assert reply_json(command)["code"] == "binary_frame"


def test_subscription_limit() -> None:
    s = make(max_subscriptions=2)
    assert isinstance(s.receive('{"type":"subscribe","topic":"a"}', now=0)[0], DoSubscribe)
    assert isinstance(s.receive('{"type":"subscribe","topic":"b"}', now=0)[0], DoSubscribe)
    # Re-subscribing an existing topic is allowed at the limit.
    assert isinstance(s.receive('{"type":"subscribe","topic":"a"}', now=0)[0], DoSubscribe)
    (command,) = s.receive('{"type":"subscribe","topic":"c"}', now=0)
    body = reply_json(command)
    assert body["code"] == "too_many_subscriptions" and body["ref"] == "c"
    assert s.topics == {"a", "b"}


def test_unsubscribe_is_idempotent_and_acknowledged() -> None:
    s = make()
    s.receive('{"type":"subscribe","topic":"a"}', now=0)
    for _ in range(2):
        unsub, reply = s.receive('{"type":"unsubscribe","topic":"a"}', now=0)
        assert isinstance(unsub, DoUnsubscribe)
        assert reply_json(reply) == {"type": "unsubscribed", "topic": "a"}
    assert s.topics == set()


def test_ping_is_answered_and_sends_become_commands() -> None:
    s = make()
    (pong,) = s.receive('{"type":"ping","ts":9}', now=0)
    assert reply_json(pong) == {"type": "pong", "ts": 9}
    (send,) = s.receive('{"type":"send","id":"x","event":"e","data":[1]}', now=0)
    assert isinstance(send, DoSend) and send.frame.id == "x"


def test_oversize_frame_is_refused() -> None:
    (command,) = make(max_frame_bytes=10).receive('{"type":"ping","ts":12345678}', now=0)
    assert reply_json(command)["code"] == "invalid_frame"


def test_liveness_deadline_is_interval_plus_timeout() -> None:
    s = make(heartbeat_interval=10, heartbeat_timeout=5)
    assert not s.is_dead(now=15)
    assert s.is_dead(now=15.01)
    s.receive('{"type":"pong","ts":1}', now=15)
    assert not s.is_dead(now=29)


def test_each_connection_pings_on_its_own_phase_once_per_interval() -> None:
    # Issue 9: every connection was pinged in the same loop turn (11-22 ms turns).
    config = HubConfig(heartbeat_interval=10, heartbeat_timeout=5)
    early = ServerSession(session_id="a", config=config, now=0, ping_phase=0.25)
    late = ServerSession(session_id="b", config=config, now=0, ping_phase=0.75)
    due = {
        name: [t for t in range(40) if s.ping_due(now=t)]
        for name, s in (("early", early), ("late", late))
    }
    # First pings at 6.25 and 8.75 (the second half of the interval), then every 10.
    assert due == {"early": [7, 17, 27, 37], "late": [9, 19, 29, 39]}


def test_a_stalled_loop_does_not_ping_in_a_burst() -> None:
    s = ServerSession(
        session_id="a", config=HubConfig(heartbeat_interval=10), now=0, ping_phase=0.0
    )
    assert not s.ping_due(now=4)  # the first ping is half an interval away at the earliest
    assert s.ping_due(now=5)
    assert s.ping_due(now=55)  # four intervals late: one ping, not four
    assert not s.ping_due(now=56)
    assert s.next_ping == 65
