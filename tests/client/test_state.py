from __future__ import annotations

import itertools

import pytest

from tether.client.state import TRANSITIONS, State, StateMachine, Trigger
from tether.errors import IllegalTransition

LEGAL = [(s, t, n) for s, moves in TRANSITIONS.items() for t, n in moves.items()]
ILLEGAL = [(s, t) for s, t in itertools.product(State, Trigger) if t not in TRANSITIONS[s]]


def machine_in(state: State) -> StateMachine:
    m = StateMachine()
    m.state = state
    return m


@pytest.mark.parametrize(("state", "trigger", "expected"), LEGAL)
def test_every_legal_transition(state: State, trigger: Trigger, expected: State) -> None:
    m = machine_in(state)
    seen: list[tuple[State, State]] = []
    m.listen(lambda old, new: seen.append((old, new)))
    assert m.fire(trigger) is expected
    assert m.state is expected
    # Listeners hear real changes only, never self-transitions.
    assert seen == ([] if expected is state else [(state, expected)])


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_every_illegal_transition_raises_and_changes_nothing(
    state: State, trigger: Trigger
) -> None:
    m = machine_in(state)
    with pytest.raises(IllegalTransition):
        m.fire(trigger)
    assert m.state is state


def test_table_is_complete_and_closed_is_terminal() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CLOSED] == {}
    for state in State:
        if state is not State.CLOSED:
            assert TRANSITIONS[state][Trigger.CLOSE] is State.CLOSED


def test_reconnect_is_legal_from_every_live_state() -> None:
    for state in State:
        if state is not State.CLOSED:
            assert Trigger.RETRY in TRANSITIONS[state]


def test_first_connect_is_not_a_reconnect() -> None:
    m = StateMachine()
    m.fire(Trigger.START)
    assert not m.ever_connected
    m.fire(Trigger.OPENED)
    assert m.ever_connected
    m.fire(Trigger.DROPPED)
    assert m.state is State.RECONNECTING and m.ever_connected


def test_circuit_breaker_path() -> None:
    m = StateMachine()
    for trigger in (
        Trigger.START,
        Trigger.ATTEMPT_FAILED,
        Trigger.ATTEMPT_FAILED,
        Trigger.GAVE_UP,
        Trigger.PROBE,
        Trigger.GAVE_UP,
        Trigger.RETRY,
        Trigger.OPENED,
    ):
        m.fire(trigger)
    assert m.state is State.CONNECTED
    assert "connected" in repr(m)
