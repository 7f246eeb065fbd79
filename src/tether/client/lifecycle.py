"""The client's connection policy, without I/O: what to do after each attempt and close.

Theory of operation
-------------------
:class:`Lifecycle` decides everything about *when* a client (re)connects: it counts
attempts, draws backoff delays, opens and closes the circuit, turns close codes and
HTTP statuses into decisions, resets the retry counter after a stable period, and
keeps the health counters. It never sleeps, reads a clock or touches a socket: the
driver passes ``now`` in and acts on what it is told.

The driver's loop is the same in every runtime (the asyncio client and the browser
client's driver both follow it)::

    lifecycle.start()                       # DISCONNECTED -> CONNECTING
    loop:
        lifecycle.begin_attempt()
        open a socket ...
          failed  -> delay = lifecycle.attempt_failed(failure)
          opened  -> reconnect = lifecycle.opened(now=...)
                     ... serve it; lifecycle.stable(now=...) from the heartbeat timer ...
                     delay = lifecycle.closed(code, reason, now=...)
        delay is None: wait for reconnect() or close()
        else: wait delay (reconnect()/close() cut it short), then
        if lifecycle.wake(): attempt again

Every state change goes through :class:`~tether.client.state.StateMachine`'s one table.
The golden vectors in ``tests/vectors/`` run this class and the browser client's
``Lifecycle`` (``static/tether-core.js``) through the same steps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..backoff import backoff_delay
from ..config import ClientConfig
from ..errors import AUTH_FAILURE_CODES, HINTED_CODES, NO_RECONNECT_CODES
from .state import State, StateMachine, Trigger

#: The longest ``retry_after_ms`` a close reason may ask for (one hour): a larger value is
#: a hub bug, and obeying it would leave the client idle for longer than anyone expects.
MAX_RETRY_HINT_MS = 3_600_000

#: Refresh a token once this fraction of its lifetime has passed: early enough to absorb
#: a slow identity provider and clock skew, late enough not to hammer it.
REFRESH_AT = 0.8
#: After a failed refresh, try again after a quarter of what remains before expiry, within
#: these bounds (seconds): never a busy loop, never so late the token lapses unnoticed.
REFRESH_RETRY_MIN = 0.1
REFRESH_RETRY_MAX = 5.0


def parse_close_hint(reason: str) -> float | None:
    """The ``retry_after_ms`` hint of a 1012/1013 close reason, in seconds."""
    try:
        body = json.loads(reason)
    except ValueError:
        return None
    if isinstance(body, dict):
        value = body.get("retry_after_ms")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if 0 <= value <= MAX_RETRY_HINT_MS:
            return float(value) / 1000
    return None


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt did not produce a session; ``hint`` overrides backoff, ``fatal``
    opens the circuit at once (retrying could only fail the same way)."""

    reason: str
    hint: float | None = None
    fatal: bool = False


def handshake_closed(code: int, reason: str, *, can_refresh: bool) -> Failure:
    """The hub closed the socket before ``welcome`` (refused the session)."""
    hint = parse_close_hint(reason) if code in HINTED_CODES else None
    # With a token source an auth failure is retried (with backoff and a fresh token);
    # without one, retrying could only fail the same way: stop.
    fatal = code in AUTH_FAILURE_CODES and not can_refresh
    return Failure(f"closed during handshake: {code} {reason}".strip(), hint=hint, fatal=fatal)


def handshake_refused(status: int, retry_after: str | None, *, can_refresh: bool) -> Failure:
    """The HTTP upgrade was answered with ``status`` (and maybe a ``Retry-After``)."""
    hint = float(retry_after) if retry_after and retry_after.isdigit() else None
    fatal = status in (401, 403) and not can_refresh
    return Failure(f"handshake refused: HTTP {status}", hint=hint, fatal=fatal)


def refresh_delay(expires_at: float, now: float, *, failed: bool = False) -> float:
    """Seconds until the next token refresh, for a token expiring at ``expires_at``
    (both wall-clock seconds). ``failed``: the last refresh failed, try again soon."""
    remaining = max(0.0, expires_at - now)
    if failed:
        return min(REFRESH_RETRY_MAX, max(REFRESH_RETRY_MIN, remaining / 4))
    return remaining * REFRESH_AT


class Lifecycle:
    """Attempts, backoff, circuit and health counters of one client. Pure: pass ``now`` in.

    ``can_refresh``: the client has a token source, so an auth failure is worth retrying
    with a fresh token. ``rand`` draws the jitter (``[0, 1)``); inject it to test.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        can_refresh: bool = False,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.can_refresh = can_refresh
        self._rand = rand
        self.machine = StateMachine()
        #: Attempts since the last stable connection (what backoff and the circuit count).
        self.attempts = 0
        self.total_reconnects = 0
        self.failed_reconnects = 0
        self.successful_connects = 0
        self.heartbeat_failures = 0
        self.circuit_trips = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None
        #: Set by :meth:`request_retry`; consumed by :meth:`wake`.
        self.retry_requested = False

    def __repr__(self) -> str:
        return (
            f"<Lifecycle {self.state.value} attempts={self.attempts} "
            f"trips={self.circuit_trips} retry_requested={self.retry_requested}>"
        )

    @property
    def state(self) -> State:
        return self.machine.state

    # --- the driver's calls, in the order of the loop above -----------------------------

    def start(self) -> None:
        self.machine.fire(Trigger.START)

    def begin_attempt(self) -> None:
        self.attempts += 1

    def attempt_failed(self, failure: Failure) -> float | None:
        """An attempt failed: the delay before :meth:`wake` (``None``: wait for an explicit
        reconnect). Past ``max_attempts`` (or a fatal failure) the circuit opens and the
        delay is the cooldown, after which :meth:`wake` probes."""
        self.last_error = failure.reason
        if self.state is State.CLOSED:
            return None
        if self.retry_requested:
            return 0.0
        self.failed_reconnects += 1
        if failure.fatal or self.attempts >= self.config.max_attempts:
            return self._trip()
        self.machine.fire(Trigger.ATTEMPT_FAILED)
        return failure.hint if failure.hint is not None else self.backoff()

    def opened(self, *, now: float) -> bool:
        """The hub welcomed us; returns whether this is a *re*connect (``on_reconnect``)."""
        reconnect = self.machine.ever_connected
        self.connected_at = now
        self.retry_requested = False  # a reconnect() during this attempt: it has happened
        self.successful_connects += 1
        if reconnect:
            self.total_reconnects += 1
        else:
            # The first connection is not a reconnect: nothing to back off from yet (the
            # stable-period rule guards reconnects to a hub that accepts, then crashes).
            self.attempts = 0
        self.machine.fire(Trigger.OPENED)
        return reconnect

    def stable(self, *, now: float) -> float | None:
        """Reset the retry counter once connected for ``stable_after``; returns when to
        call again (``None``: nothing left to reset)."""
        if not self.attempts or self.connected_at is None or self.state is not State.CONNECTED:
            return None
        due = self.connected_at + self.config.stable_after
        if now >= due:
            self.attempts = 0
            return None
        return due

    def heartbeat_failed(self) -> None:
        self.heartbeat_failures += 1

    def closed(self, code: int, reason: str, *, now: float) -> float | None:
        """A connection that had been opened has ended with ``code``: the delay before
        :meth:`wake`, or ``None`` to stay down until an explicit reconnect."""
        self.last_error = f"{code} {reason}".strip()
        connected_at, self.connected_at = self.connected_at, None
        if self.state is State.CLOSED:
            return None
        if self.retry_requested:
            return 0.0
        if connected_at is not None and now - connected_at >= self.config.stable_after:
            self.attempts = 0
        if code in AUTH_FAILURE_CODES and not self.can_refresh:
            return self._trip()
        if code in NO_RECONNECT_CODES:
            self.machine.fire(Trigger.ENDED)
            return None
        self.machine.fire(Trigger.DROPPED)
        hint = parse_close_hint(reason) if code in HINTED_CODES else None
        return hint if hint is not None else self.backoff()

    def crashed(self) -> float | None:
        """A bug inside the driver ended an attempt: count it as a failed one."""
        if self.state is State.CLOSED:
            return None
        if self.retry_requested:
            return 0.0
        if self.state is State.CONNECTED:
            self.connected_at = None
            self.machine.fire(Trigger.DROPPED)
            return self.backoff()
        return self.attempt_failed(Failure("internal error"))

    def request_retry(self) -> None:
        """``reconnect()``: retry now, with the counter and the circuit reset."""
        self.retry_requested = True

    def network_back(self) -> bool:
        """The network (or the tab) is back while waiting: retry now, as a last attempt at
        most, so a failure right away does not skip the circuit. Returns whether to."""
        if self.state not in (State.RECONNECTING, State.FAILED):
            return False
        self.attempts = min(self.attempts, self.config.max_attempts - 1)
        return True

    def wake(self) -> bool:
        """The wait is over: fire RETRY (if asked) or PROBE (circuit open, half-open now);
        returns whether to start an attempt."""
        if self.retry_requested:
            self.retry_requested = False
            self.attempts = 0
            if self.machine.can(Trigger.RETRY):
                self.machine.fire(Trigger.RETRY)
        elif self.state is State.FAILED:
            self.machine.fire(Trigger.PROBE)
        return self.state in (State.CONNECTING, State.RECONNECTING)

    def close(self) -> None:
        if self.state is not State.CLOSED:
            self.machine.fire(Trigger.CLOSE)

    # --- decisions ----------------------------------------------------------------------

    def backoff(self) -> float:
        """The delay before the next attempt: ceiling by attempts so far, jittered."""
        c = self.config
        return backoff_delay(
            self.attempts,
            base=c.backoff_base,
            factor=c.backoff_factor,
            cap=c.backoff_cap,
            jitter=c.jitter,
            ratio=c.jitter_ratio,
            seconds=c.jitter_seconds,
            rand=self._rand(),
        )

    def _trip(self) -> float:
        self.circuit_trips += 1
        self.machine.fire(Trigger.GAVE_UP)
        return self.config.circuit_cooldown


__all__ = [
    "MAX_RETRY_HINT_MS",
    "REFRESH_AT",
    "Failure",
    "Lifecycle",
    "handshake_closed",
    "handshake_refused",
    "parse_close_hint",
    "refresh_delay",
]
