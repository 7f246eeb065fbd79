"""The client connection state machine: one explicit table of transitions.

Theory of operation
-------------------
A client is in exactly one :class:`State`. Things that happen to it are
:class:`Trigger` values; :data:`TRANSITIONS` says, for each state, which
triggers are legal and where each one leads. Anything not in the table is a
bug in the driver and raises :class:`~tether.errors.IllegalTransition` instead
of silently doing something plausible.

    DISCONNECTED --START--> CONNECTING --OPENED--> CONNECTED
    CONNECTING / RECONNECTING --ATTEMPT_FAILED--> RECONNECTING (wait backoff, try again)
    CONNECTED --DROPPED--> RECONNECTING
    any attempt --GAVE_UP--> FAILED   (max attempts reached: the circuit opens;
                                      or a close code that must not be retried)
    FAILED --PROBE--> RECONNECTING    (half-open: one attempt after the cooldown)
    CONNECTED --ENDED--> DISCONNECTED (the hub closed with 1000: do not reconnect)
    any but CLOSED --RETRY--> (RE)CONNECTING  (reconnect(): retry state reset)
    any --CLOSE--> CLOSED             (close(): terminal)

``CONNECTING`` is only the very first attempt; every later attempt, including
retries of a first attempt that failed, happens in ``RECONNECTING``. That keeps
"was this client ever connected?" separate from the state: ``on_reconnect``
fires on ``OPENED`` only if the client had been ``CONNECTED`` before, never on
the first connect.

The machine itself is pure and tiny; the asyncio driver (``tether.client.aio``)
and the browser client follow the same table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..errors import IllegalTransition


class State(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


class Trigger(enum.StrEnum):
    START = "start"
    OPENED = "opened"
    ATTEMPT_FAILED = "attempt_failed"
    DROPPED = "dropped"
    GAVE_UP = "gave_up"
    PROBE = "probe"
    ENDED = "ended"
    RETRY = "retry"
    CLOSE = "close"


S, T = State, Trigger

TRANSITIONS: dict[State, dict[Trigger, State]] = {
    S.DISCONNECTED: {
        T.START: S.CONNECTING,
        T.RETRY: S.CONNECTING,
        T.CLOSE: S.CLOSED,
    },
    S.CONNECTING: {
        T.OPENED: S.CONNECTED,
        T.ATTEMPT_FAILED: S.RECONNECTING,
        T.GAVE_UP: S.FAILED,
        T.RETRY: S.CONNECTING,
        T.CLOSE: S.CLOSED,
    },
    S.CONNECTED: {
        T.DROPPED: S.RECONNECTING,
        T.GAVE_UP: S.FAILED,
        T.ENDED: S.DISCONNECTED,
        T.RETRY: S.RECONNECTING,
        T.CLOSE: S.CLOSED,
    },
    S.RECONNECTING: {
        T.OPENED: S.CONNECTED,
        T.ATTEMPT_FAILED: S.RECONNECTING,
        T.GAVE_UP: S.FAILED,
        T.RETRY: S.RECONNECTING,
        T.CLOSE: S.CLOSED,
    },
    S.FAILED: {
        T.PROBE: S.RECONNECTING,
        T.RETRY: S.RECONNECTING,
        T.CLOSE: S.CLOSED,
    },
    S.CLOSED: {},
}

StateListener = Callable[[State, State], None]


class StateMachine:
    """Holds the current state and applies triggers through :data:`TRANSITIONS`."""

    __slots__ = ("_listeners", "ever_connected", "state")

    def __init__(self) -> None:
        self.state = State.DISCONNECTED
        #: True once the client has been CONNECTED: the next OPENED is a *re*connect.
        self.ever_connected = False
        self._listeners: list[StateListener] = []

    def __repr__(self) -> str:
        return f"<StateMachine {self.state.value} ever_connected={self.ever_connected}>"

    def listen(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def can(self, trigger: Trigger) -> bool:
        return trigger in TRANSITIONS[self.state]

    def fire(self, trigger: Trigger) -> State:
        """Apply ``trigger``; returns the new state. Listeners hear real changes only."""
        try:
            new = TRANSITIONS[self.state][trigger]
        except KeyError:
            raise IllegalTransition(
                f"{trigger.value!r} is not allowed in state {self.state.value!r}"
            ) from None
        old, self.state = self.state, new
        if new is State.CONNECTED:
            self.ever_connected = True
        if new is not old:
            for listener in list(self._listeners):
                listener(old, new)
        return new
