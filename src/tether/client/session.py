"""The client's protocol logic, without I/O: frames in, events and frames out.

:class:`ClientSession` owns everything that must survive reconnects: each
subscription's cursor, the outbox of unacknowledged messages, and the counters
behind ``client.metrics``. The asyncio driver (``tether.client.aio``) feeds it
the frames it reads and the clock, writes the frames it returns and turns its
events into callbacks. The browser client implements the same rules.

Delivery rule, per topic: a message is handed to the application only if it is
exactly the next offset of the cursor's epoch. Anything at or below the cursor
is a duplicate and dropped; anything further ahead, or in another epoch, is a
gap that is reported (``Resync``) before the message is delivered. Nothing is
skipped silently.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, MessageTooBig, ProtocolError
from ..outbox import Outbox, OutboxItem
from ..payload import encode_payload
from ..protocol import (
    MAX_COUNT,
    UNDELIVERABLE,
    Ack,
    Authed,
    Cursor,
    Error,
    Gap,
    Message,
    Nack,
    Ping,
    Pong,
    Publish,
    Send,
    Subscribe,
    Subscribed,
    Undeliverable,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_server_frame,
    encode,
    encode_data,
    message_envelope,
)
from ..ratelimit import TokenBucket

#: Shares of the hub's advertised inbound rate and burst a client allows itself: frames
#: bunch up in transit (TCP, a busy event loop) and pings and pongs are not paced, so a
#: client sending at the hub's exact rate would still be refused now and then.
PACE_RATE_SHARE = 0.9
PACE_BURST_SHARE = 0.5
#: Refusals that are not final: the frame goes again after the hub's ``retry_after_ms``.
RETRYABLE = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.IN_PROGRESS}
)
#: When a refusal carries no ``retry_after_ms`` (an older hub): one second.
DEFAULT_RETRY_MS = 1000
#: A heartbeat check that runs this much later than it asked to (a laptop that slept, a
#: process stopped or starved) probes before it declares the link dead: the silence may
#: be the check's own, not the hub's (docs/protocol.md, Heartbeat). A second is far
#: beyond event-loop jitter and far below any heartbeat interval.
LATE_BY = 1.0

# --- events handed to the driver ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message to hand to the application, in order, exactly once."""

    topic: str
    epoch: str
    offset: int
    ts: int
    data: Any
    #: True when it arrived as part of a resume replay rather than live.
    recovered: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """Loss that could not be avoided: these offsets will never be delivered."""

    topic: str
    missing: list[Gap]
    #: The cursor once the gap is stepped over (what the app has "seen" after this).
    cursor: Cursor | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """The hub answered an outbox item: ``ok`` with ``result``, or a nack."""

    item: OutboxItem
    ok: bool
    result: Any = None
    code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Welcomed:
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    message: str
    ref: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionConfirmed:
    topic: str
    recovered: bool
    cursor: Cursor | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionRefused:
    """The hub holds no subscription to ``topic`` (a final ``error`` naming it in ``ref``).

    The session has dropped the topic: it is not re-subscribed on reconnect.
    """

    topic: str
    code: str
    message: str


Event = (
    Delivery
    | Resync
    | Resolved
    | Welcomed
    | ServerError
    | SubscriptionConfirmed
    | SubscriptionRefused
)


@dataclass(slots=True)
class _Sub:
    topic: str
    cursor: Cursor | None
    #: Messages to replay before live ones, asked for while there is no cursor yet.
    rewind: int = 0
    #: Offsets up to this one (in the reply's epoch) are replay, not live.
    replay_head: int = 0
    replay_epoch: str = ""
    confirmed: bool = False
    #: The position of the last event the driver handed to the application (what an app
    #: persists): behind ``cursor`` while read events wait in the driver's inbox.
    handed: Cursor | None = None


@dataclass(slots=True)
class Counters:
    messages_received: int = 0
    messages_recovered: int = 0
    duplicates_dropped: int = 0
    resyncs: int = 0
    undeliverable: int = 0
    protocol_errors: int = 0
    rtt: float | None = None
    last_heartbeat: float | None = None


@dataclass(slots=True)
class Poll:
    """What the heartbeat check decided: frames to write, whether the link is dead, when next."""

    frames: list[bytes] = field(default_factory=list)
    dead: bool = False
    wake_at: float = 0.0


class ClientSession:
    """Protocol state that outlives any single connection. Pure: pass ``now`` in."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        heartbeat_interval: float = 25.0,
        heartbeat_timeout: float = 20.0,
        id_prefix: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.counters = Counters()
        self.connected = False
        self._subs: dict[str, _Sub] = {}
        self._id_prefix = id_prefix or secrets.token_hex(8)
        self._next_id = 0
        self._last_received = 0.0
        self._next_ping = 0.0
        #: When the last :meth:`poll` asked to run next (to tell a late check).
        self._poll_due: float | None = None
        #: A late check's probe: sent at, and dead if nothing arrives by.
        self._probe_sent = 0.0
        self._probe_deadline: float | None = None
        #: The hub's inbound rate, scaled by the PACE_* shares (from ``welcome``).
        self._bucket: TokenBucket | None = None
        #: Subscribe/unsubscribe frames waiting for the bucket, in order.
        self._paced: deque[bytes] = deque()
        #: After a refusal (rate_limited / overloaded), nothing paced goes before this.
        self._hold_until = 0.0
        #: Topics unsubscribed on this connection and not yet confirmed (re-sent if refused).
        self._unsubscribing: set[str] = set()
        #: Set when a refusal changed what :meth:`due` will give; the driver clears it.
        self.repace = False
        #: The hub's ``max_frame_bytes`` (from ``welcome``): a bigger frame would be closed
        #: with 1009, and re-sent after every reconnect, for ever.
        self.max_frame_bytes: int | None = None
        #: The hub's id for the current connection (``welcome.session``): what its logs
        #: call this client. ``None`` while not connected.
        self.session_id: str | None = None
        #: Outbox items too big for this hub, removed at connect; the driver fails them.
        self.refused: list[OutboxItem] = []

    def __repr__(self) -> str:
        return (
            f"<ClientSession connected={self.connected} topics={len(self._subs)} "
            f"outbox={len(self.outbox)}>"
        )

    # --- subscriptions ------------------------------------------------------------------

    @property
    def topics(self) -> list[str]:
        return list(self._subs)

    def cursor(self, topic: str) -> Cursor | None:
        sub = self._subs.get(topic)
        return None if sub is None else sub.cursor

    def app_cursor(self, topic: str) -> Cursor | None:
        """Where the application is in ``topic``: the last message (or reported gap) handed
        to it, else where its subscription starts. What to persist and resume from."""
        sub = self._subs.get(topic)
        if sub is None:
            return None
        return sub.handed if sub.handed is not None else sub.cursor

    def handed_to_app(self, event: Event) -> None:
        """The driver handed ``event`` to the application: its cursor moves."""
        topic = getattr(event, "topic", None)
        sub = None if topic is None else self._subs.get(topic)
        if sub is None:
            return
        if isinstance(event, Delivery):
            sub.handed = Cursor(epoch=event.epoch, offset=event.offset)
        elif isinstance(event, Resync) and event.cursor is not None:
            sub.handed = event.cursor  # past what is lost
        elif isinstance(event, SubscriptionConfirmed) and sub.handed is None:
            sub.handed = event.cursor  # where it starts; a later one does not move it back

    def subscribe(
        self, topic: str, *, resume: Cursor | None = None, rewind: int = 0
    ) -> bytes | None:
        """Track ``topic``; returns the frame to write now if connected.

        ``resume`` (e.g. a cursor the app persisted) is used only for a topic not
        already tracked; a tracked topic keeps its own, newer cursor. ``rewind`` asks
        for the last N messages before live ones while the topic has no cursor (its
        first subscribe, or every one until the hub confirms it); after that, resumes.
        """
        if not 0 <= rewind <= MAX_COUNT:
            raise ValueError(f"rewind must be a whole number from 0 to {MAX_COUNT}, not {rewind}")
        sub = self._subs.get(topic)
        if sub is None:
            sub = self._subs[topic] = _Sub(topic, resume, rewind)
        return self._subscribe_frame(sub) if self.connected else None

    def unsubscribe(self, topic: str) -> bytes | None:
        if self._subs.pop(topic, None) is None or not self.connected:
            return None
        self._unsubscribing.add(topic)
        return encode(Unsubscribe(topic=topic))

    def _subscribe_frame(self, sub: _Sub) -> bytes:
        sub.confirmed = False
        rewind = sub.rewind if sub.cursor is None else 0
        return encode(Subscribe(topic=sub.topic, resume=sub.cursor, rewind=rewind))

    # --- outbox -------------------------------------------------------------------------

    def new_id(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}-{self._next_id}"

    def make_send(
        self, event: str, data: Any, *, expires_at: float, key: str | None = None
    ) -> OutboxItem:
        id = self.new_id()
        frame = encode(Send(id=id, event=event, data=encode_data(data)))
        return OutboxItem(id=id, frame=frame, expires_at=expires_at, key=key)

    def make_publish(
        self, topic: str, data: Any, *, expires_at: float, key: str | None = None
    ) -> OutboxItem:
        id = self.new_id()
        # The hub enforces the payload rule too; checking here fails fast, before queueing.
        frame = encode(Publish(id=id, topic=topic, data=encode_payload(data)))
        return OutboxItem(id=id, frame=frame, expires_at=expires_at, key=key)

    def check_size(self, item: OutboxItem) -> None:
        """Raise :class:`MessageTooBig` if the hub is known to refuse ``item``'s frame."""
        limit = self.max_frame_bytes
        if limit is not None and len(item.frame) > limit:
            raise MessageTooBig(
                f"message is {len(item.frame)} bytes as a frame; the hub takes at most {limit}"
            )

    # --- pacing -------------------------------------------------------------------------

    def pace(self, frames: list[bytes]) -> None:
        """Queue frames to go out within the hub's inbound rate, ahead of the outbox."""
        if self.connected:
            self._paced.extend(frames)

    def due(self, *, now: float) -> tuple[list[bytes], float | None]:
        """The paced frames, then the unsent outbox items, that may be written now (marked
        written), and when to ask again if some must wait (``None``: nothing waits).

        Pacing keeps the client inside the rate the hub advertised, so an outbox flush
        or a re-subscribe of many topics at reconnect is not refused; after a refusal
        nothing goes until the hub's ``retry_after_ms`` has passed, and what was refused
        goes again, in order.
        """
        if not self.connected:
            return [], None
        if now < self._hold_until:
            return [], self._hold_until
        frames: list[bytes] = []
        unsent: deque[OutboxItem] | None = None
        bucket = self._bucket
        while True:
            item = None
            if not self._paced:
                if unsent is None:
                    unsent = deque(self.outbox.unsent())
                if not unsent:
                    return frames, None
                item = unsent[0]
            if bucket is not None and not bucket.take(now):
                return frames, now + bucket.wait()
            if item is None:
                frames.append(self._paced.popleft())
            else:
                assert unsent is not None
                unsent.popleft()
                item.sent = item.written = True
                frames.append(item.frame)

    def _hold(self, now: float, retry_after_ms: int | None) -> None:
        """The hub refused a frame for now: send nothing paced before it says so."""
        wait = (retry_after_ms if retry_after_ms is not None else DEFAULT_RETRY_MS) / 1000
        self._hold_until = max(self._hold_until, now + wait)
        self.repace = True

    # --- connection lifecycle -----------------------------------------------------------

    def connection_opened(self, *, now: float) -> list[bytes]:
        """The socket is open: re-subscribe every topic from its cursor, then flush the
        outbox; returns the frames due now (the rest follow as :meth:`due` allows)."""
        self.connected = True
        self._paced.clear()
        self._unsubscribing.clear()
        self._hold_until = 0.0
        self._last_received = now
        self._next_ping = now + self.heartbeat_interval
        self._poll_due = self._probe_deadline = None
        self.outbox.mark_all_unsent()
        if self.max_frame_bytes is not None:
            self.refused.extend(self.outbox.remove_larger_than(self.max_frame_bytes))
        self._paced.extend(self._subscribe_frame(sub) for sub in self._subs.values())
        return self.due(now=now)[0]

    def connection_lost(self) -> None:
        self.connected = False
        self.session_id = None
        self._paced.clear()  # never written: connection_opened rebuilds what is needed
        for sub in self._subs.values():
            sub.confirmed = False
        self.outbox.mark_all_unsent()

    def is_live(self, topic: str) -> bool:
        """Connected, and the hub confirmed ``topic``'s subscription on this connection."""
        sub = self._subs.get(topic)
        return self.connected and sub is not None and sub.confirmed

    # --- heartbeat ----------------------------------------------------------------------

    def poll(self, *, now: float) -> Poll:
        """Heartbeat check: ping when due; declare the link dead past its deadline.

        Call it again at ``wake_at``. A check that runs more than :data:`LATE_BY` after
        that and finds the deadline passed sends a probe ``ping`` and waits
        ``heartbeat_timeout`` for any frame before declaring the link dead.
        """
        late = self._poll_due is not None and now > self._poll_due + LATE_BY
        deadline = self._last_received + self.heartbeat_interval + self.heartbeat_timeout
        if self._probe_deadline is not None:
            if self._last_received >= self._probe_sent:
                self._probe_deadline = None  # something arrived after the probe: alive
            elif now >= self._probe_deadline:
                return Poll(dead=True, wake_at=now)
        result = Poll(wake_at=0.0)
        if now >= deadline and self._probe_deadline is None:
            if not late:
                return Poll(dead=True, wake_at=now)
            self._probe_sent = now
            self._probe_deadline = now + self.heartbeat_timeout
            self._next_ping = now  # the probe is this check's ping
        if now >= self._next_ping:
            result.frames.append(encode(Ping(ts=int(now * 1000))))
            self._next_ping = now + self.heartbeat_interval
        probe_deadline = self._probe_deadline
        result.wake_at = min(
            self._next_ping, deadline if probe_deadline is None else probe_deadline
        )
        self._poll_due = result.wake_at
        return result

    def probe(self, *, now: float) -> list[bytes]:
        """An explicit liveness check (the network came back, the machine woke): ping, and
        the link is dead if nothing arrives within ``heartbeat_timeout``. Returns the frames
        to write; call :meth:`poll` next at the probe's deadline."""
        if not self.connected:
            return []
        self._probe_sent = now
        self._probe_deadline = now + self.heartbeat_timeout
        self._next_ping = now + self.heartbeat_interval
        return [encode(Ping(ts=int(now * 1000)))]

    # --- inbound ------------------------------------------------------------------------

    def receive(self, data: str | bytes, *, now: float) -> tuple[list[Event], list[bytes]]:
        """Process one frame from the hub: events for the app, frames to write back."""
        self._last_received = now
        try:
            frame = decode_server_frame(data)
        except ProtocolError as exc:
            self.counters.protocol_errors += 1
            envelope = message_envelope(data)
            if envelope is not None:
                return self._on_undeliverable(*envelope, why=exc.message)
            # A hub that speaks garbage is a bug worth surfacing, not a reason to drop data.
            return [ServerError(exc.code, exc.message, None)], []
        if isinstance(frame, Message):
            return self._on_message(frame), []
        if isinstance(frame, Ping):
            self.counters.last_heartbeat = now
            return [], [encode(Pong(ts=frame.ts))]
        if isinstance(frame, Pong):
            self.counters.rtt = max(0.0, now - frame.ts / 1000)
            self.counters.last_heartbeat = now
            return [], []
        if isinstance(frame, Subscribed):
            return self._on_subscribed(frame), []
        if isinstance(frame, Nack) and frame.code in RETRYABLE:
            item = self.outbox.get(frame.id)
            if item is not None:  # not final: keep it, re-send it when the hub says
                item.sent = False
                self._hold(now, frame.retry_after_ms)
            return [], []
        if isinstance(frame, Error) and frame.code in RETRYABLE:
            self._hold(now, frame.retry_after_ms)
            self._repace_refused(frame.ref)
            return [], []
        if isinstance(frame, Ack | Nack):
            item = self.outbox.resolve(frame.id)
            if item is None:
                return [], []  # an answer to a retry already resolved, or an expired item
            if isinstance(frame, Ack):
                return [Resolved(item, True, result=frame.result)], []
            return [Resolved(item, False, code=frame.code, message=frame.message)], []
        if isinstance(frame, Welcome):
            self.session_id = frame.session
            self.heartbeat_interval = frame.heartbeat_ms / 1000
            self.heartbeat_timeout = frame.heartbeat_timeout_ms / 1000
            self.max_frame_bytes = frame.limits.max_frame_bytes
            limits = frame.limits
            self._bucket = None
            if limits.inbound_rate > 0 and limits.inbound_burst > 0:
                self._bucket = TokenBucket(
                    rate=limits.inbound_rate * PACE_RATE_SHARE,
                    burst=max(1, int(limits.inbound_burst * PACE_BURST_SHARE)),
                    now=now,
                )
            self._next_ping = now + self.heartbeat_interval
            self.counters.last_heartbeat = now
            return [Welcomed(frame)], []
        if isinstance(frame, Error) and frame.ref is not None and frame.ref in self._subs:
            # Final (retryable codes were handled above): forbidden, too many subscriptions,
            # a topic no longer allowed after a token refresh. Re-subscribing on every
            # reconnect would only be refused again.
            del self._subs[frame.ref]
            return [SubscriptionRefused(frame.ref, frame.code, frame.message)], []
        if isinstance(frame, Error):
            return [ServerError(frame.code, frame.message, frame.ref)], []
        if isinstance(frame, Unsubscribed):
            self._unsubscribing.discard(frame.topic)
            return [], []
        if isinstance(frame, Authed):
            return [], []
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover

    def _repace_refused(self, topic: str | None) -> None:
        """Re-queue the subscribe or unsubscribe the hub refused (named by ``ref``)."""
        if topic is None:
            return
        sub = self._subs.get(topic)
        if sub is not None and not sub.confirmed:
            self._paced.append(self._subscribe_frame(sub))
        elif topic in self._unsubscribing:
            self._paced.append(encode(Unsubscribe(topic=topic)))

    def _on_subscribed(self, reply: Subscribed) -> list[Event]:
        sub = self._subs.get(reply.topic)
        if sub is None:
            return []  # unsubscribed locally while the reply was in flight
        resume = sub.cursor
        offset = resume.offset if resume is not None and resume.epoch == reply.epoch else 0
        if resume is None:
            # A rewind's replay follows its cursor, like a resume's (protocol.md).
            offset = max(0, reply.head - reply.rewound)
        # Step over the gaps the hub declared in its current epoch: they are reported, not awaited.
        for gap in reply.missing:
            if gap.epoch == reply.epoch and gap.start == offset + 1 and gap.end is not None:
                offset = gap.end
        sub.cursor = Cursor(epoch=reply.epoch, offset=min(offset, reply.head))
        # What a resume replays was recovered; what a rewind replays was never missed, so
        # it is delivered like live messages (``recovered`` False, not counted as such).
        replay_head = reply.head if resume is not None else sub.cursor.offset
        sub.replay_epoch, sub.replay_head = reply.epoch, replay_head
        sub.confirmed = True
        events: list[Event] = [SubscriptionConfirmed(reply.topic, reply.recovered, sub.cursor)]
        if reply.missing:
            self.counters.resyncs += 1
            events.append(Resync(reply.topic, list(reply.missing), sub.cursor))
        return events

    @staticmethod
    def _gaps_before(cursor: Cursor, epoch: str, offset: int) -> list[Gap] | None:
        """What is lost between ``cursor`` and ``offset`` of ``epoch``; ``None``: a duplicate."""
        if epoch == cursor.epoch:
            if offset <= cursor.offset:
                return None
            if offset > cursor.offset + 1:
                return [Gap(epoch=epoch, start=cursor.offset + 1, end=offset - 1)]
            return []
        gaps = [Gap(epoch=cursor.epoch, start=cursor.offset + 1, end=None)]
        if offset > 1:
            gaps.append(Gap(epoch=epoch, start=1, end=offset - 1))
        return gaps

    def _on_undeliverable(
        self, topic: str, epoch: str, offset: int, *, why: str
    ) -> tuple[list[Event], list[bytes]]:
        """A message that arrived but can't be decoded: report it lost, step over it.

        Waiting for it would wait for ever (a replay brings the same bytes), so the
        offset is reported as a gap with a reason, the cursor moves past it and the
        hub is told (it counts these).
        """
        sub = self._subs.get(topic)
        if sub is None or sub.cursor is None:
            return [], []
        gaps = self._gaps_before(sub.cursor, epoch, offset)
        if gaps is None:
            self.counters.duplicates_dropped += 1
            return [], []
        gaps.append(Gap(epoch=epoch, start=offset, end=offset, reason=UNDELIVERABLE))
        sub.cursor = Cursor(epoch=epoch, offset=offset)
        self.counters.resyncs += 1
        self.counters.undeliverable += 1
        report = Undeliverable(topic=topic, epoch=epoch, offset=offset, reason=why[:200])
        return [Resync(topic, gaps, sub.cursor)], [encode(report)]

    def _on_message(self, msg: Message) -> list[Event]:
        sub = self._subs.get(msg.topic)
        if sub is None or sub.cursor is None:
            return []  # not (or no longer) subscribed
        gaps = self._gaps_before(sub.cursor, msg.epoch, msg.offset)
        if gaps is None:
            self.counters.duplicates_dropped += 1
            return []
        events: list[Event] = []
        if gaps:
            self.counters.resyncs += 1
            events.append(Resync(msg.topic, gaps, Cursor(epoch=msg.epoch, offset=msg.offset - 1)))
        sub.cursor = Cursor(epoch=msg.epoch, offset=msg.offset)
        recovered = msg.epoch == sub.replay_epoch and msg.offset <= sub.replay_head
        self.counters.messages_received += 1
        if recovered:
            self.counters.messages_recovered += 1
        events.append(Delivery(msg.topic, msg.epoch, msg.offset, msg.ts, msg.data, recovered))
        return events
