"""The client's connection policy, driven with a fake clock and a fixed jitter draw."""

from __future__ import annotations

import pytest

from tether.backoff import Jitter
from tether.client.lifecycle import (
    MAX_RETRY_HINT_MS,
    Failure,
    Lifecycle,
    handshake_closed,
    handshake_refused,
    parse_close_hint,
    refresh_delay,
)
from tether.client.state import State
from tether.config import ClientConfig
from tether.errors import CloseCode

# Jitter off (proportional, ratio 0): every delay is exactly the backoff ceiling.
CONFIG = ClientConfig(
    backoff_base=1.0,
    backoff_factor=2.0,
    backoff_cap=30.0,
    jitter=Jitter.PROPORTIONAL,
    jitter_ratio=0.0,
    max_attempts=3,
    stable_after=30.0,
    circuit_cooldown=60.0,
)
DOWN = Failure("connection refused")


def lifecycle(**kw: object) -> Lifecycle:
    life = Lifecycle(CONFIG, rand=lambda: 0.5, **kw)  # type: ignore[arg-type]
    life.start()
    return life


def connect(life: Lifecycle, *, now: float) -> bool:
    assert life.wake() or life.state is State.CONNECTING
    life.begin_attempt()
    return life.opened(now=now)


def test_failed_attempts_back_off_then_open_the_circuit_and_probe_after_the_cooldown() -> None:
    life = lifecycle()
    delays = []
    for _ in range(3):
        life.begin_attempt()
        delays.append(life.attempt_failed(DOWN))
        if life.state is not State.FAILED:
            assert life.wake()
    assert delays == [2.0, 4.0, 60.0]  # ceilings 2, 4, then the cooldown
    assert life.state is State.FAILED
    assert (life.circuit_trips, life.failed_reconnects) == (1, 3)
    assert life.last_error == "connection refused"
    # Half-open: the wake after the cooldown probes once...
    assert life.wake() and life.state is State.RECONNECTING
    life.begin_attempt()
    # ...and a failed probe opens the circuit again straight away.
    assert life.attempt_failed(DOWN) == 60.0
    assert life.state is State.FAILED and life.circuit_trips == 2


def test_the_first_connect_is_not_a_reconnect_and_a_drop_is() -> None:
    life = lifecycle()
    life.begin_attempt()
    assert life.opened(now=0.0) is False
    assert life.state is State.CONNECTED
    assert life.closed(CloseCode.GOING_AWAY, "", now=5.0) == 1.0
    assert life.state is State.RECONNECTING
    assert connect(life, now=6.0) is True
    assert (life.successful_connects, life.total_reconnects) == (2, 1)


def test_the_retry_counter_resets_only_after_the_stable_period() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    life.closed(CloseCode.GOING_AWAY, "", now=1.0)
    life.wake()
    life.begin_attempt()
    life.attempt_failed(DOWN)
    life.wake()
    assert connect(life, now=10.0)
    assert life.attempts == 2
    # The heartbeat timer asks until the period has passed, then nothing is left to do.
    assert life.stable(now=20.0) == 40.0
    assert life.attempts == 2
    assert life.stable(now=40.0) is None
    assert life.attempts == 0
    assert life.stable(now=41.0) is None


def test_a_drop_before_the_stable_period_keeps_backing_off() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    life.closed(CloseCode.GOING_AWAY, "", now=1.0)
    life.wake()
    connect(life, now=2.0)  # attempts: 1
    # A hub that accepts then crashes: the counter is not reset, the next delay grows.
    assert life.closed(CloseCode.INTERNAL_ERROR, "", now=3.0) == 2.0
    connect(life, now=4.0)  # attempts: 2
    assert life.closed(CloseCode.INTERNAL_ERROR, "", now=4.0 + 30.0) == 1.0  # stable: reset


def test_close_1000_stays_down_and_reconnect_brings_it_back() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    assert life.closed(CloseCode.NORMAL, "bye", now=1.0) is None
    assert life.state is State.DISCONNECTED
    assert life.last_error == "1000 bye"
    life.request_retry()
    assert life.wake() and life.state is State.CONNECTING
    assert life.attempts == 0 and not life.retry_requested


@pytest.mark.parametrize("code", [CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER])
def test_1012_and_1013_honour_the_hint_and_fall_back_to_backoff(code: CloseCode) -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    assert life.closed(code, '{"retry_after_ms": 2500}', now=1.0) == 2.5
    connect(life, now=2.0)
    assert life.closed(code, "restarting", now=3.0) == 2.0  # no hint: backoff


def test_a_policy_violation_stops_without_a_token_source_and_retries_with_one() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    assert life.closed(CloseCode.POLICY_VIOLATION, "token expired", now=1.0) == 60.0
    assert life.state is State.FAILED and life.circuit_trips == 1

    refreshing = lifecycle(can_refresh=True)
    refreshing.begin_attempt()
    refreshing.opened(now=0.0)
    assert refreshing.closed(CloseCode.POLICY_VIOLATION, "token expired", now=1.0) == 1.0
    assert refreshing.state is State.RECONNECTING


def test_reconnect_wins_over_the_failure_it_interrupts() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.request_retry()
    assert life.attempt_failed(DOWN) == 0.0
    assert life.failed_reconnects == 0  # the user asked: not a failed reconnect
    assert life.wake() and life.state is State.CONNECTING and life.attempts == 0


def test_reconnect_closes_the_circuit() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.attempt_failed(Failure("refused", fatal=True))
    assert life.state is State.FAILED
    life.request_retry()
    assert life.wake() and life.state is State.RECONNECTING and life.attempts == 0


def test_the_network_coming_back_retries_as_a_last_attempt() -> None:
    life = lifecycle()
    for _ in range(2):
        life.begin_attempt()
        life.attempt_failed(DOWN)
        life.wake()
    assert life.network_back()
    assert life.attempts == 2  # already at max - 1: unchanged
    life.begin_attempt()
    assert life.attempt_failed(DOWN) == 60.0  # a failure right away still trips
    assert life.network_back() and life.wake() and life.state is State.RECONNECTING
    connected = lifecycle()
    connected.begin_attempt()
    connected.opened(now=0.0)
    assert not connected.network_back()  # nothing to do while connected


def test_close_is_terminal_and_later_events_change_nothing() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.close()
    assert life.attempt_failed(DOWN) is None
    assert life.closed(CloseCode.GOING_AWAY, "", now=1.0) is None
    assert life.crashed() is None
    assert not life.wake()
    assert life.state is State.CLOSED and life.failed_reconnects == 0


def test_a_crash_while_connected_drops_and_backs_off() -> None:
    life = lifecycle()
    life.begin_attempt()
    life.opened(now=0.0)
    assert life.crashed() == 1.0
    assert life.state is State.RECONNECTING and life.connected_at is None
    life.wake()
    life.begin_attempt()
    assert life.crashed() == 2.0 and life.last_error == "internal error"


def test_handshake_failures() -> None:
    assert handshake_closed(1008, "bad token", can_refresh=False).fatal
    assert not handshake_closed(1008, "bad token", can_refresh=True).fatal
    assert handshake_closed(1013, '{"retry_after_ms": 700}', can_refresh=False).hint == 0.7
    assert handshake_closed(1011, '{"retry_after_ms": 700}', can_refresh=False).hint is None
    assert handshake_refused(401, None, can_refresh=False).fatal
    assert not handshake_refused(403, None, can_refresh=True).fatal
    refused = handshake_refused(429, "3", can_refresh=False)
    assert (refused.hint, refused.fatal) == (3.0, False)
    assert refused.reason == "handshake refused: HTTP 429"
    assert handshake_refused(503, "soon", can_refresh=False).hint is None


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ('{"retry_after_ms": 1500}', 1.5),
        ('{"retry_after_ms": 0}', 0.0),
        (f'{{"retry_after_ms": {MAX_RETRY_HINT_MS}}}', 3600.0),
        (f'{{"retry_after_ms": {MAX_RETRY_HINT_MS + 1}}}', None),
        ('{"retry_after_ms": -1}', None),
        ('{"retry_after_ms": true}', None),
        ('{"retry_after_ms": "5"}', None),
        ("[1500]", None),
        ("restarting", None),
        ("", None),
    ],
)
def test_parse_close_hint(reason: str, hint: float | None) -> None:
    assert parse_close_hint(reason) == hint


def test_refresh_timing() -> None:
    assert refresh_delay(1100.0, 1000.0) == pytest.approx(80.0)
    assert refresh_delay(900.0, 1000.0) == 0.0  # already expired: now
    # After a failure: soon, never a busy loop, never past the token's life.
    assert refresh_delay(1100.0, 1000.0, failed=True) == 5.0
    assert refresh_delay(1002.0, 1000.0, failed=True) == 0.5
    assert refresh_delay(1000.0, 1000.0, failed=True) == 0.1
