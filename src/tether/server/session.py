"""The hub's per-connection protocol logic, without I/O.

:class:`ServerSession` decodes and validates what one client sends, enforces the
per-connection limits, tracks liveness, and turns each frame into either a
direct reply or a :data:`Command` for the hub (which owns topics and handlers).
Bad input becomes an ``error`` frame and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..auth import Action
from ..config import HubConfig
from ..errors import ErrorCode, ProtocolError
from ..protocol import (
    PROTOCOL_VERSION,
    Auth,
    Cursor,
    Error,
    Limits,
    Nack,
    Ping,
    Pong,
    Publish,
    Send,
    Subscribe,
    Undeliverable,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_client_frame,
    encode,
    frame_names,
)
from ..ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class Reply:
    frame: bytes
    #: Sent at once, ahead of commands queued behind a running handler (pongs: liveness).
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class DoSubscribe:
    topic: str
    resume: Cursor | None
    rewind: int = 0  # only without ``resume``


@dataclass(frozen=True, slots=True)
class DoUnsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class DoSend:
    frame: Send | Publish


@dataclass(frozen=True, slots=True)
class DoAuth:
    token: str


@dataclass(frozen=True, slots=True)
class CountUndeliverable:
    """The client reported a message it could not decode (and stepped over)."""

    report: Undeliverable


@dataclass(frozen=True, slots=True)
class CountForbidden:
    """A request the identity may not make (``tether_forbidden_total``); its reply follows."""


Command = (
    Reply | DoSubscribe | DoUnsubscribe | DoSend | DoAuth | CountUndeliverable | CountForbidden
)

Permission = Callable[[Action, str], bool]


def error_frame(code: ErrorCode | str, message: str, ref: str | None = None) -> bytes:
    return encode(Error(code=str(code), message=message, ref=ref))


class ServerSession:
    """One connection's protocol state on the hub. Pure: pass ``now`` (monotonic seconds)."""

    __slots__ = ("_bucket", "can", "config", "id", "last_received", "next_ping", "topics")

    def __init__(
        self,
        *,
        session_id: str,
        config: HubConfig,
        now: float,
        can: Permission = lambda action, topic: True,
        ping_phase: float = 1.0,
    ) -> None:
        """``ping_phase`` (0..1) places this connection's pings within the interval (its
        first ping comes between half an interval and one interval after ``now``)."""
        self.id = session_id
        self.config = config
        self.topics: set[str] = set()
        self.last_received = now
        #: When to ping next. The first ping falls in the second half of the interval,
        #: placed by this connection's phase: spread out, yet never right after connecting
        #: (a peer that just spoke needs no probe) and never later than one interval.
        phase = max(0.0, min(1.0, ping_phase))
        self.next_ping = now + config.heartbeat_interval * (0.5 + 0.5 * phase)
        #: Whether this connection's identity may do ``action`` on a topic (set by the hub).
        self.can = can
        self._bucket = TokenBucket(rate=config.inbound_rate, burst=config.inbound_burst, now=now)

    def __repr__(self) -> str:
        return f"<ServerSession {self.id} topics={len(self.topics)}>"

    def welcome(self, *, wall_ms: int) -> bytes:
        c = self.config
        return encode(
            Welcome(
                version=PROTOCOL_VERSION,
                session=self.id,
                heartbeat_ms=int(c.heartbeat_interval * 1000),
                heartbeat_timeout_ms=int(c.heartbeat_timeout * 1000),
                limits=Limits(
                    max_frame_bytes=c.max_frame_bytes,
                    max_subscriptions=c.max_subscriptions,
                    dedup_window=c.dedup_window,
                    inbound_rate=c.inbound_rate,
                    inbound_burst=c.inbound_burst,
                ),
                ts=wall_ms,
            )
        )

    def ping_due(self, *, now: float) -> bool:
        """Whether this connection's ping is due; if so, its next one is an interval on.

        Each connection pings on its own phase (set at creation), so a hub with many
        connections pings a share of them per check instead of all in one loop turn.
        """
        if now < self.next_ping:
            return False
        interval = self.config.heartbeat_interval
        # Skip whole missed intervals (a stalled loop) rather than pinging in a burst.
        self.next_ping += interval * max(1, int((now - self.next_ping) // interval) + 1)
        return True

    def is_dead(self, *, now: float) -> bool:
        """Silent past its heartbeat deadline (interval + timeout)?"""
        c = self.config
        return now - self.last_received > c.heartbeat_interval + c.heartbeat_timeout

    def _rate_limited(self, data: str | bytes) -> Reply:
        """Refuse a frame past the inbound rate, naming it and saying when to retry, so the
        client re-sends exactly it (a nack for a send/publish, else an error with ref)."""
        retry_ms = max(1, math.ceil(self._bucket.wait() * 1000))
        message = f"more than {self.config.inbound_rate:g} frames/s; this one was not applied"
        ref, nack_id = frame_names(data)
        if nack_id is not None:
            nack = Nack(
                id=nack_id, code=ErrorCode.RATE_LIMITED, message=message, retry_after_ms=retry_ms
            )
            return Reply(encode(nack))
        error = Error(
            code=ErrorCode.RATE_LIMITED, message=message, ref=ref, retry_after_ms=retry_ms
        )
        return Reply(encode(error))

    def touch(self, *, now: float) -> None:
        """Something arrived that is not a frame for the hub (a protocol-level ping)."""
        self.last_received = now

    def receive_binary(self, *, now: float) -> list[Command]:
        self.last_received = now
        return [Reply(error_frame(ErrorCode.BINARY_FRAME, "binary frames are not supported"))]

    def receive(self, data: str | bytes, *, now: float) -> list[Command]:
        """One text frame from the client: replies and commands, in the order to apply them."""
        self.last_received = now
        if not self._bucket.take(now):
            return [self._rate_limited(data)]
        if len(data) > self.config.max_frame_bytes:
            # Transports enforce this with close 1009; this guards adapters that cannot.
            return [Reply(error_frame(ErrorCode.INVALID_FRAME, "frame exceeds max_frame_bytes"))]
        try:
            frame = decode_client_frame(data)
        except ProtocolError as exc:
            if exc.nack_id is not None:
                return [Reply(encode(Nack(id=exc.nack_id, code=exc.code, message=exc.message)))]
            return [Reply(error_frame(exc.code, exc.message, exc.ref))]
        if isinstance(frame, Ping):
            return [Reply(encode(Pong(ts=frame.ts)), urgent=True)]
        if isinstance(frame, Pong):
            return []
        if isinstance(frame, Subscribe):
            if not self.can(Action.SUBSCRIBE, frame.topic):
                refusal = error_frame(ErrorCode.FORBIDDEN, "not allowed to subscribe", frame.topic)
                return [CountForbidden(), Reply(refusal)]
            if frame.topic not in self.topics and len(self.topics) >= self.config.max_subscriptions:
                return [
                    Reply(
                        error_frame(
                            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                            f"at most {self.config.max_subscriptions} subscriptions per connection",
                            frame.topic,
                        )
                    )
                ]
            self.topics.add(frame.topic)
            rewind = frame.rewind if frame.resume is None else 0
            return [DoSubscribe(frame.topic, frame.resume, rewind)]
        if isinstance(frame, Unsubscribe):
            self.topics.discard(frame.topic)
            return [DoUnsubscribe(frame.topic), Reply(encode(Unsubscribed(topic=frame.topic)))]
        if isinstance(frame, Auth):
            return [DoAuth(frame.token)]
        if isinstance(frame, Undeliverable):
            return [CountUndeliverable(frame)]
        return [DoSend(frame)]
