"""The hub: connections, topics and client messages, wired to a broker.

Theory of operation
-------------------
The hub is the coordinator; the decisions live in sans-I/O parts it feeds:

* :class:`~tether.server.session.ServerSession` per connection turns frames and
  the time into commands (subscribe, send, pong, ...), heartbeat and rate
  decisions;
* :class:`~tether.server.fanout.Fanout` holds every topic's subscribers and the
  node's cursor: it makes the resume seam exact and repairs a lossy feed;
* :class:`~tether.server.messages.ClientMessages` runs each client message once
  through the dedup window (shared through Redis when the broker is);
* the :class:`~tether.server.broker.Broker` owns offsets, epochs and history:
  in memory (one node) or in Redis (many).

A connection's commands apply in the order its frames arrived. With the
in-memory broker, subscribe and publish complete synchronously, so they run
inline; a handler, or any broker call that must be awaited (Redis), runs on the
connection's worker task, and what arrives meanwhile queues behind it, so
``subscribe T, publish T, unsubscribe T`` always means what it says. Pongs and
reports skip the queue. Time comes from the ``clock``/``wall`` the hub was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ..auth import (
    ANONYMOUS,
    SUBPROTOCOL,
    Action,
    Authenticator,
    AuthError,
    Identity,
    token_from_handshake,
)
from ..config import HubConfig, from_env
from ..errors import CloseCode, ErrorCode
from ..history import Entry, Replay
from ..payload import InvalidPayload, check_payload, encode_payload
from ..protocol import (
    Authed,
    Cursor,
    Error,
    Nack,
    Ping,
    Publish,
    Send,
    encode,
    validate_topic,
)
from .admission import Admission, Refusal
from .broker import Broker, BrokerUnavailable, MemoryBroker, TooManyTopics
from .fanout import FLUSH_SMOOTHING, Fanout, Subscriber, next_flush_delay
from .links import Batch, Link
from .messages import RETRY_LATER_MS, ClientMessages, Handler
from .session import (
    Command,
    CountForbidden,
    CountUndeliverable,
    DoAuth,
    DoSend,
    DoSubscribe,
    DoUnsubscribe,
    Reply,
    ServerSession,
    error_frame,
)
from .stats import HubStats

#: What ``asgi(ws_path=)`` accepts: absolute, no trailing slash, URL-safe segments.
WS_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")

logger = logging.getLogger("tether.hub")


#: How long a cut-off slow consumer's close frame may wait behind its full buffer before
#: the socket is aborted: its buffer is what we are protecting, so not long.
SLOW_CONSUMER_ABORT = 0.5
#: What makes two joiners' replay reads the same: topic, resume epoch and offset, rewind.
ReplayKey = tuple[str, str, int, int]

#: A silent peer is presumed dead: give its close handshake a second, then abort.
DEAD_PEER_ABORT = 1.0
#: A repair read that fails (Redis away) is retried after this, doubling up to the max:
#: quick after a blip, and at most one read per topic every few seconds in an outage.
REPAIR_RETRY_MIN = 0.1
REPAIR_RETRY_MAX = 5.0
#: Replay reads a joiner may need before its replay meets the node's cursor. The
#: second read always does (see fanout.py); a third covers a reordering we did not foresee.
JOIN_ATTEMPTS = 3


#: ``authorize(identity, topic, action) -> bool``: the app's own permission decision.
Authorizer = Callable[[Identity, str, Action], bool]


@dataclass(frozen=True, slots=True)
class Handshake:
    """The hub's decision on a WebSocket handshake.

    ``refusal`` set: answer with that HTTP status, never open. Otherwise open, offering
    ``subprotocol``; then, if ``auth_error`` is set, close at once with 1008 and that
    reason (browsers cannot read a handshake's status, so they must be told this way).
    """

    refusal: Refusal | None = None
    identity: Identity = ANONYMOUS
    auth_error: str | None = None
    subprotocol: str | None = None
    #: The client's address (behind a trusted proxy, from X-Forwarded-For).
    address: str = ""


class _LinkState:
    """Per-connection hub bookkeeping for in-order client->hub message handling."""

    __slots__ = ("closed_with", "expiry", "opened_at", "queue", "sends_queued", "worker")

    def __init__(self, opened_at: float) -> None:
        #: When the hub started serving it (monotonic), for the closing log's duration.
        self.opened_at = opened_at
        #: ``(code, reason)`` when the hub closed it; ``None`` when the client or the
        #: network did.
        self.closed_with: tuple[int, str] | None = None
        #: Commands waiting for the one ahead of them (a running handler), in arrival
        #: order. Created on first use: most connections never send, and an idle
        #: connection's footprint is what lets one node hold many.
        self.queue: deque[Command] | None = None
        #: How many of those are client messages (bounded by ``max_pending_sends``).
        self.sends_queued = 0
        self.worker: asyncio.Task[None] | None = None
        #: Closes the connection when its token expires (tokens with an ``exp`` only).
        self.expiry: asyncio.TimerHandle | None = None


class Hub:
    """A Tether hub. Mount ``hub.asgi()`` in any ASGI app, or run it with ``tether serve``.

    Options are the fields of :class:`~tether.config.HubConfig`, as keywords or
    ``TETHER_*`` environment variables.
    """

    def __init__(
        self,
        *,
        config: HubConfig | None = None,
        broker: Broker | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        """``broker`` holds topics and history: by default in this process, or in Redis
        when ``redis_url`` is set (several nodes then behave as one). Pass a broker that
        outlives this hub to keep history across a hub restart; the hub closes only a
        broker it made itself. ``clock`` (monotonic: heartbeats, rates, dedup ages) and
        ``wall`` (message timestamps, token expiry) are the hub's time sources, so tests
        can drive its time-dependent decisions."""
        self._clock = clock
        self._wall = wall
        self.config = config if config is not None else from_env(HubConfig, **options)
        c = self.config
        self._owns_broker = broker is None
        if broker is None:
            if c.redis_url:
                from .redis_broker import RedisBroker  # only scaled-out hubs need redis-py

                broker = RedisBroker.from_config(c)
            else:
                broker = MemoryBroker(
                    history_size=c.history_size,
                    history_ttl=c.history_ttl,
                    max_topics=c.max_topics,
                )
        else:
            broker.release_all()  # this hub's subscribers are the only ones that count
        self.broker: Broker = broker
        #: The in-memory broker answers at once: subscribe and publish then run inline,
        #: without a turn through the connection's worker.
        self._memory = broker if isinstance(broker, MemoryBroker) else None
        self.stats = HubStats()
        self.fanout = Fanout(
            schedule_flush=self._schedule_flush,
            request_repair=self._request_repair,
            on_broken=self._cut_broken_subscriber,
            on_slow=self._slow_subscriber,
            on_retain=broker.retain,
            on_release=broker.release,
            stats=self.stats,
        )
        broker.bind(self.fanout)
        #: Repairs of the feed and a lazy broker start: cancelled by :meth:`aclose`.
        self._background: set[asyncio.Task[None]] = set()
        #: Replay reads in flight, shared by joiners resuming a topic from the same cursor:
        #: a fleet reconnecting after a restart resumes from a handful of cursors, so
        #: 5,000 joins cost a few Redis reads instead of 5,000 (which queued past
        #: redis_timeout for a pool connection, and the timeouts fed the storm).
        self._replays: dict[ReplayKey, asyncio.Future[Replay]] = {}
        self._started = False
        self._links: dict[Link, _LinkState] = {}
        self._flush_handle: asyncio.Handle | None = None
        #: How long fan-outs take (smoothed), and when the last one ended (``_clock``).
        self._flush_took = 0.0
        self._flush_ended = 0.0
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.closing = False
        #: Shutting down: running handlers finish, no new one starts (see :meth:`drain`).
        self.draining = False
        self._workers: set[asyncio.Task[None]] = set()
        self.authenticator = Authenticator.from_config(c)
        self.messages = ClientMessages(
            config=c,
            broker=broker,
            stats=self.stats,
            authenticated=self.authenticator is not None,
            allowed=self.allowed,
            check_raw=self.check_raw,
            publish=self.publish_raw,
            publish_now=None if self._memory is None else self._publish_now,
            clock=clock,
            wall=wall,
        )
        self.admission = Admission(c)
        #: Optional app hook deciding permissions instead of the token's claims.
        self.authorize: Authorizer | None = None

    def __repr__(self) -> str:
        return (
            f"<Hub connections={len(self._links)} topics={len(self.broker)} "
            f"handlers={len(self.messages.handlers)} closing={self.closing}>"
        )

    # --- application API ----------------------------------------------------------------

    def on(self, event: str) -> Callable[[Handler], Handler]:
        """Register the handler for client messages sent with ``event``::

            @hub.on("chat.post")
            async def post(msg: Incoming) -> dict:
                ...  # the return value is the ack's result

        Raise :class:`tether.Reject` to nack with your own code and message.
        """

        def register(handler: Handler) -> Handler:
            self.messages.handlers[event] = handler
            return handler

        return register

    def authorizer(self, fn: Authorizer) -> Authorizer:
        """Decorator: decide subscribe/publish permissions in code (replaces the claims)."""
        self.authorize = fn
        return fn

    def allowed(self, identity: Identity, action: Action, topic: str) -> bool:
        if self.authorize is not None:
            return bool(self.authorize(identity, topic, action))
        return identity.allows(action, topic)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a page on ``origin`` may connect (``allowed_origins``, docs/security.md)."""
        return self.admission.origin_allowed(origin, host)

    def count_refusal(self) -> None:
        """A connection refused before it reached :meth:`handshake` (the accept gate's 429)."""
        self.stats.handshakes_refused += 1

    def handshake(
        self,
        *,
        headers: Mapping[str, str],
        subprotocols: list[str],
        query: Mapping[str, str],
        address: str,
    ) -> Handshake:
        """Admission and authentication of one WebSocket handshake (both adapters use it)."""
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in subprotocols else None
        if not self.admission.origin_allowed(headers.get("origin"), headers.get("host")):
            self.stats.handshakes_refused += 1
            return Handshake(refusal=Refusal(403, "origin not allowed"))
        peer = address
        address = self.admission.client_address(peer, headers.get("x-forwarded-for"))
        refusal = self.admission.check(
            address, now=self._clock(), via_proxy=self.admission.is_proxy(peer)
        )
        if refusal is not None:
            self.stats.handshakes_refused += 1
            return Handshake(refusal=refusal)
        if self.authenticator is None:
            return Handshake(subprotocol=subprotocol, address=address)
        token = token_from_handshake(
            headers, subprotocols, query, allow_query=self.config.allow_query_token
        )
        if token is None:
            self.stats.auth_failures += 1
            return Handshake(
                auth_error="invalid token: none presented", subprotocol=subprotocol, address=address
            )
        try:
            identity = self.authenticator.verify(token)
        except AuthError as exc:
            self.stats.auth_failures += 1
            return Handshake(auth_error=str(exc), subprotocol=subprotocol, address=address)
        refusal = self.admission.identity_full(identity.subject)
        if refusal is not None:
            self.stats.handshakes_refused += 1
            return Handshake(refusal=refusal)
        return Handshake(identity=identity, subprotocol=subprotocol, address=address)

    def _counted_subject(self, link: Link) -> str | None:
        return None if self.authenticator is None else link.identity.subject

    async def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` (any JSON value) to ``topic``; returns its offset.

        Raises ``ValueError`` for a bad topic or a payload that not every client could
        decode (:class:`~tether.payload.InvalidPayload`: unsafe integers, NaN/Infinity,
        unpaired surrogates, too deep or too big), ``TypeError`` for a value JSON can't
        hold, :class:`~tether.server.broker.TooManyTopics` when the topic table is full
        of topics in use, and :class:`~tether.server.broker.BrokerUnavailable` when the
        shared broker (Redis) cannot be reached. Whatever is raised, nothing was published.
        """
        entry = await self.publish_raw(validate_topic(topic), self._encode(data))
        return entry.offset

    def publish_nowait(self, topic: str, data: Any) -> Entry:
        """Synchronous :meth:`publish`, for code that is not a coroutine.

        Only with the in-memory broker: a shared broker (Redis) must be awaited.
        """
        if self._memory is None:
            raise TypeError("publish_nowait needs the in-memory broker; use await hub.publish()")
        raw = self._encode(data)
        return self._published(
            self._memory.publish_now(validate_topic(topic), raw, now=self._wall())
        )

    def _encode(self, data: Any) -> msgspec.Raw:
        c = self.config
        try:
            return encode_payload(data, max_depth=c.max_payload_depth, max_bytes=c.max_frame_bytes)
        except InvalidPayload:
            self.stats.payloads_refused += 1
            raise

    def check_raw(self, data: msgspec.Raw) -> None:
        """Raise :class:`~tether.payload.InvalidPayload` unless ``data`` obeys the payload
        rule (docs/protocol.md)."""
        c = self.config
        try:
            check_payload(bytes(data), max_depth=c.max_payload_depth, max_bytes=c.max_frame_bytes)
        except InvalidPayload:
            self.stats.payloads_refused += 1
            raise

    async def publish_raw(self, topic: str, data: msgspec.Raw, *, checked: bool = False) -> Entry:
        """Publish JSON text from outside (HTTP, WebSocket) to an already-validated topic.

        Raises :class:`~tether.payload.InvalidPayload` for a payload that breaks the
        payload rule (unless ``checked``), :class:`~tether.server.broker.TooManyTopics`
        when the topic can't be created and
        :class:`~tether.server.broker.BrokerUnavailable` when Redis can't be reached;
        whatever is raised, nothing is published.
        """
        if not checked:
            self.check_raw(data)
        if not self._started:
            await self.start()  # mounted without the hub's lifespan: connect on first use
        if self._memory is not None:
            return self._published(self._memory.publish_now(topic, data, now=self._wall()))
        started = self._clock()
        try:
            entry = await self.broker.publish(
                topic, data, now=self._wall(), floor=self.fanout.cursor(topic)
            )
        except BrokerUnavailable:
            self.stats.publishes_failed += 1
            raise
        finally:
            self.stats.publish_seconds.observe(self._clock() - started)
        return self._published(entry)

    def _publish_now(self, topic: str, data: msgspec.Raw) -> Entry:
        """Publish to the in-memory broker, synchronously (``data`` already checked)."""
        assert self._memory is not None
        return self._published(self._memory.publish_now(topic, data, now=self._wall()))

    def _published(self, entry: Entry) -> Entry:
        self.stats.publishes += 1
        return entry

    @property
    def connection_count(self) -> int:
        return len(self._links)

    async def topic_head(self, topic: str) -> Cursor:
        """The topic's epoch and its last offset (creating the topic if it is new)."""
        replay = await self.broker.replay(validate_topic(topic), None, now=self._wall())
        return Cursor(epoch=replay.epoch, offset=replay.head)

    # --- fan-out ------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # One flush per loop turn: what is published in one turn goes out as one write.
        # Under load the next flush waits its turn (see next_flush_delay).
        loop = asyncio.get_running_loop()
        delay = next_flush_delay(
            took=self._flush_took,
            since=self._clock() - self._flush_ended,
            most=self.config.fanout_yield_max,
        )
        self._flush_handle = (
            loop.call_later(delay, self._flush) if delay > 0 else loop.call_soon(self._flush)
        )

    def _flush(self) -> None:
        self._flush_handle = None
        started = self._clock()
        self.fanout.flush()
        self._flush_ended = self._clock()
        took = self._flush_ended - started
        self._flush_took += (took - self._flush_took) * FLUSH_SMOOTHING
        self.stats.fanout_seconds.observe(took)

    def _request_repair(self, topic: str, after: Cursor) -> None:
        """The feed skipped an entry of ``topic`` (or may have): read history after ``after``."""
        self._in_background(self._repair(topic, after))

    def _in_background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _repair(self, topic: str, after: Cursor) -> None:
        delay = REPAIR_RETRY_MIN
        while not self.closing and topic in self.fanout:
            try:
                replay = await self.broker.replay(topic, after, now=self._wall())
            except BrokerUnavailable as exc:
                # Redis is away: nothing newer can be published either. Keep trying
                # (bounded delay), so what was missed is delivered once it is back.
                logger.warning("repair of %s failed, retrying in %.1fs: %s", topic, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REPAIR_RETRY_MAX)
                continue
            except Exception:
                logger.exception("internal error repairing %s", topic)
                self.stats.internal_errors += 1
                self.fanout.repair_failed(topic)
                return
            self.fanout.repaired(topic, replay)
            return
        self.fanout.repair_failed(topic)

    def _cut_broken_subscriber(self, link: Subscriber) -> None:
        self._cut_broken(link)  # type: ignore[arg-type]

    def _slow_subscriber(self, link: Subscriber) -> None:
        self.overflow(link)  # type: ignore[arg-type]

    def _subscribe_now(self, link: Link, join: DoSubscribe) -> None:
        """Subscribe with the in-memory broker: the whole seam in one synchronous step."""
        assert self._memory is not None
        topic = join.topic
        try:
            self.fanout.begin_join(link, topic)
            replay = self._memory.replay_now(
                topic, join.resume, now=self._wall(), rewind=join.rewind
            )
        except TooManyTopics as exc:
            self._join_refused(link, topic, exc.code, exc.message)
            return
        self._count_join(self.fanout.joined(link, topic, replay) or 0, replay)

    async def _subscribe(self, link: Link, join: DoSubscribe) -> None:
        """Subscribe through a broker that must be awaited (Redis): join, read, merge."""
        topic = join.topic
        self.fanout.begin_join(link, topic)
        for attempt in range(JOIN_ATTEMPTS):
            try:
                # A shared read may have started before this link began joining; fan-out
                # then finds it too old (None below) and the retry reads afresh.
                replay = await self._read_replay(join, shared=attempt == 0)
            except (TooManyTopics, BrokerUnavailable) as exc:
                self._join_refused(link, topic, exc.code, exc.message)
                return
            sent = self.fanout.joined(link, topic, replay)
            if sent is not None:
                self._count_join(sent, replay)
                return
        # Joiners keep racing ahead of this one's reads (can't happen twice in a row
        # unless publishing outruns Redis reads): shed it; it resumes after the hint.
        self.fanout.join_failed(link, topic)
        self._cut(link, CloseCode.TRY_AGAIN_LATER, self.retry_reason(), abort_after=None)

    def _count_join(self, sent: int, replay: Replay) -> None:
        self.stats.replayed += max(0, sent)
        if replay.missing:
            self.stats.resumes_with_loss += 1

    async def _read_replay(self, join: DoSubscribe, *, shared: bool) -> Replay:
        topic, resume, rewind = join.topic, join.resume, join.rewind
        if not shared:
            return await self.broker.replay(topic, resume, now=self._wall(), rewind=rewind)
        key: ReplayKey = (
            (topic, resume.epoch, resume.offset, 0)
            if resume is not None
            else (topic, "", -1, rewind)
        )
        read = self._replays.get(key)
        if read is None:
            read = asyncio.ensure_future(
                self.broker.replay(topic, resume, now=self._wall(), rewind=rewind)
            )
            self._replays[key] = read
            read.add_done_callback(lambda done: self._replay_done(key, done))
        # Shielded: a joiner that leaves (its link closed) must not cancel the others' read.
        return await asyncio.shield(read)

    def _replay_done(self, key: ReplayKey, read: asyncio.Future[Replay]) -> None:
        if self._replays.get(key) is read:
            del self._replays[key]
        if not read.cancelled():
            read.exception()  # retrieved here too: every joiner may have left meanwhile

    def _join_refused(self, link: Link, topic: str, code: str, message: str) -> None:
        self.fanout.join_failed(link, topic)
        link.session.topics.discard(topic)
        if code == ErrorCode.UNAVAILABLE:  # not final: the client re-subscribes after the hint
            frame = encode(
                Error(code=code, message=message, ref=topic, retry_after_ms=RETRY_LATER_MS)
            )
        else:
            frame = error_frame(code, message, topic)
        link.send_frames([frame])

    def _unsubscribe(self, link: Link, topic: str) -> None:
        self.fanout.leave(link, topic)

    # --- connections --------------------------------------------------------------------

    def new_session(self) -> ServerSession:
        return ServerSession(
            session_id="s-" + secrets.token_hex(6),
            config=self.config,
            now=self._clock(),
            # A random phase: connections that arrive together (after a restart) still
            # ping spread over the interval, never all in one loop turn.
            ping_phase=random.random(),
        )

    def attach(self, link: Link) -> None:
        """Start serving ``link``: sends ``welcome`` and starts the heartbeat if needed."""
        state = self._links[link] = _LinkState(self._clock())
        self._schedule_expiry(link, state)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "connection %s opened by %s from %s",
                link.session.id,
                link.identity.subject or "an anonymous client",
                link.address or "?",
                extra={
                    "event": "connection_opened",
                    "session": link.session.id,
                    "subject": link.identity.subject,
                    "address": link.address,
                },
            )
        self.admission.opened(link.address, self._counted_subject(link))
        link.session.can = lambda action, topic: self.allowed(link.identity, action, topic)
        self.stats.connections_total += 1
        link.send_frames([link.session.welcome(wall_ms=int(self._wall() * 1000))])
        if self._heartbeat_task is None:
            self._start_heartbeat()
        if not self._started:
            # Mounted without the hub's lifespan: connect the broker now. Its reads wait
            # for the connection themselves, so this link is served meanwhile.
            self._in_background(self.start())

    def detach(self, link: Link) -> None:
        """Forget ``link``: its subscriptions and queued (not yet started) client messages.

        Idempotent: called when the hub closes a link and again when its transport ends.
        """
        state = self._links.pop(link, None)
        if state is not None:
            if state.expiry is not None:
                state.expiry.cancel()
            self.stats.disconnections += 1
            self.admission.closed(link.address, self._counted_subject(link))
            if logger.isEnabledFor(logging.INFO):
                self._log_closed(link, state)
        for topic in link.session.topics:
            self._unsubscribe(link, topic)
        link.session.topics.clear()
        if state is not None and state.queue is not None:
            # A handler already running finishes (its dedup entry must resolve for retries);
            # queued ones never started, so a retry on the next connection will run them.
            state.queue.clear()
            state.sends_queued = 0

    def _log_closed(self, link: Link, state: _LinkState) -> None:
        duration = self._clock() - state.opened_at
        code, reason = state.closed_with or (None, "by the client or the network")
        logger.info(
            "connection %s closed after %.1f s (%s)",
            link.session.id,
            duration,
            reason if code is None else f"{code} {reason}",
            extra={
                "event": "connection_closed",
                "session": link.session.id,
                "subject": link.identity.subject,
                "address": link.address,
                "duration_s": round(duration, 3),
                "close_code": code,
                "close_reason": reason,
                "subscriptions": len(link.session.topics),
            },
        )

    def touch(self, link: Link) -> None:
        """A sign of life from ``link`` that carries no frame (a WebSocket ping or pong)."""
        link.session.touch(now=self._clock())

    def receive(self, link: Link, data: str | bytes | None, *, binary: bool = False) -> None:
        """Feed one inbound frame from ``link``."""
        session = link.session
        now = self._clock()
        commands = (
            session.receive_binary(now=now)
            if binary or data is None
            else (session.receive(data, now=now))
        )
        self._apply(link, commands)

    def _apply(self, link: Link, commands: list[Command]) -> None:
        """Apply a connection's commands in the order its frames arrived.

        Most take effect at once. A ``send`` runs an async handler on the connection's
        worker, and whatever arrives while anything is waiting there queues behind it,
        so ``subscribe T, publish T, unsubscribe T`` always means what it says. Only
        pongs (liveness) and reports skip the queue.
        """
        state = self._links.get(link)
        for command in commands:
            if isinstance(command, Reply) and command.urgent:
                link.send_frames([command.frame])
            elif isinstance(command, CountUndeliverable):
                self._count_undeliverable(link, command)
            elif isinstance(command, CountForbidden):
                self.stats.forbidden += 1
            elif state is None:
                if isinstance(command, Reply):
                    link.send_frames([command.frame])
            else:
                # Busy while anything waits or a handler runs (its command already left
                # the queue): then this one takes its turn behind them.
                busy = state.queue or state.worker is not None
                if busy or self._must_wait(command) or not self._run_now(link, command):
                    self._enqueue(link, state, command)

    def _must_wait(self, command: Command) -> bool:
        """Whether ``command`` needs an ``await``: a handler, or a broker that is not local."""
        if isinstance(command, DoSend):
            return isinstance(command.frame, Send) or self._memory is None
        return isinstance(command, DoSubscribe) and self._memory is None

    def _run_now(self, link: Link, command: Command) -> bool:
        """Apply a command that needs no waiting; False if it must queue after all."""
        if isinstance(command, Reply):
            link.send_frames([command.frame])
        elif isinstance(command, DoSubscribe):
            self._subscribe_now(link, command)
        elif isinstance(command, DoUnsubscribe):
            self._unsubscribe(link, command.topic)
        elif isinstance(command, DoAuth):
            self._reauthenticate(link, command.token)
        elif isinstance(command, DoSend) and isinstance(command.frame, Publish):
            reply = self.messages.publish_once_now(link, command.frame)
            if reply is None:
                return False  # a retry of a message still being handled: wait for it
            link.send_frames([reply])
        else:  # pragma: no cover - sends always queue
            raise AssertionError(f"cannot run {command!r} inline")
        return True

    def _count_undeliverable(self, link: Link, command: CountUndeliverable) -> None:
        self.stats.undeliverable += 1
        report = command.report
        # INFO, not WARNING: a client could send these at its inbound rate.
        logger.info(
            "client %s could not decode %s@%s offset %d: %s",
            link.session.id,
            report.topic,
            report.epoch,
            report.offset,
            report.reason,
        )

    def _reauthenticate(self, link: Link, token: str) -> None:
        """A fresh token in a live connection: same subject, new permissions, re-checked."""
        if self.authenticator is None:
            link.send_frames([encode(Authed(subject=link.identity.subject))])
            return
        try:
            identity = self.authenticator.verify(token)
            if identity.subject != link.identity.subject:
                raise AuthError("invalid token: a refresh must keep the same subject")
        except AuthError as exc:
            self.stats.auth_failures += 1
            link.send_frames([error_frame(ErrorCode.INVALID_TOKEN, str(exc))])
            return
        link.identity = identity
        state = self._links.get(link)
        if state is not None:
            self._schedule_expiry(link, state)
        frames = []
        for topic in sorted(link.session.topics):
            if not self.allowed(identity, Action.SUBSCRIBE, topic):
                self._unsubscribe(link, topic)
                link.session.topics.discard(topic)
                self.stats.forbidden += 1
                frames.append(error_frame(ErrorCode.FORBIDDEN, "no longer allowed", topic))
        expires = None if identity.expires_at is None else int(identity.expires_at * 1000)
        frames.append(encode(Authed(subject=identity.subject, expires_at=expires)))
        link.send_frames(frames)

    def overflow(self, link: Link) -> None:
        """A subscriber's send buffer passed its limit: cut it off (it will resume)."""
        if link.closed:
            return
        self.stats.slow_consumers += 1
        logger.warning("slow consumer %s cut off (4008)", link.session.id)
        self._cut(
            link,
            CloseCode.SLOW_CONSUMER,
            "slow consumer: send buffer exceeded",
            abort_after=SLOW_CONSUMER_ABORT,
        )

    def _cut(self, link: Link, code: int, reason: str, *, abort_after: float | None) -> None:
        """Close ``link`` from the hub's side and forget it now (not when TCP finishes)."""
        state = self._links.get(link)
        if state is not None:
            state.closed_with = (code, reason)
        link.close(code, reason, abort_after=abort_after)
        self.detach(link)  # idempotent: the transport's own close will call it again

    # --- client -> hub messages ---------------------------------------------------------

    def _enqueue(self, link: Link, state: _LinkState, command: Command) -> None:
        c = self.config
        queue = state.queue
        if queue is None:
            queue = state.queue = deque()
        if isinstance(command, DoSend):
            if state.sends_queued >= c.max_pending_sends:
                nack = Nack(
                    id=command.frame.id,
                    code=ErrorCode.OVERLOADED,
                    message="too many pending messages on this connection; retry later",
                    retry_after_ms=RETRY_LATER_MS,
                )
                link.send_frames([encode(nack)])
                return
            state.sends_queued += 1
        elif len(queue) >= c.max_pending_sends + c.inbound_burst:
            # Frames pile up behind a handler that does not finish: shed this connection
            # (it reconnects after the hint, resumes, and re-sends what was unacked).
            self.stats.overloaded += 1
            self._cut(link, CloseCode.TRY_AGAIN_LATER, self.retry_reason(), abort_after=None)
            return
        queue.append(command)
        if state.worker is None:
            worker = asyncio.get_running_loop().create_task(self._worker(link, state))
            worker.add_done_callback(lambda task: self._worker_ended(link, task))
            state.worker = worker
            self._workers.add(worker)

    async def _worker(self, link: Link, state: _LinkState) -> None:
        queue = state.queue
        assert queue is not None
        try:
            # Draining for shutdown: finish the running handler, start no other. The
            # messages left are unacknowledged, so clients re-send them after reconnecting.
            while queue and not self.draining:
                command = queue.popleft()
                if isinstance(command, DoSend):
                    state.sends_queued -= 1
                    reply = await self.messages.handle_once(link, command.frame)
                    link.send_frames([reply])
                elif isinstance(command, DoSubscribe) and self._memory is None:
                    if not link.closed:
                        await self._subscribe(link, command)
                elif not link.closed:
                    self._run_now(link, command)
        finally:
            state.worker = None

    # --- supervision --------------------------------------------------------------------

    def _cut_broken(self, link: Link) -> None:
        """A bug hit while serving ``link`` (already logged with its traceback): cut it, 1011.

        The client reconnects and resumes; what the bug interrupted is replayed or
        retried, never silently lost, and the rest of the hub carries on.
        """
        self.stats.internal_errors += 1
        try:
            self._cut(link, CloseCode.INTERNAL_ERROR, "internal error", abort_after=DEAD_PEER_ABORT)
        except Exception:
            logger.exception("could not cut %s after an internal error", link.session.id)

    def _worker_ended(self, link: Link, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            logger.error(
                "internal error handling client messages of %s", link.session.id, exc_info=exc
            )
            self._cut_broken(link)

    def _start_heartbeat(self) -> None:
        task = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name="tether-heartbeat"
        )
        task.add_done_callback(self._heartbeat_ended)
        self._heartbeat_task = task

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        """The heartbeat loop never ends on its own: if it crashed, log and restart it."""
        if task.cancelled() or self.closing or task is not self._heartbeat_task:
            return
        self.stats.internal_errors += 1
        logger.error("heartbeat loop crashed; restarting it", exc_info=task.exception())
        self._start_heartbeat()

    # --- heartbeat and shutdown ---------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        c = self.config
        # Check deadlines several times per timeout so detection lags by at most a quarter of it.
        # Pings are spread by each connection's phase: a finer tick spreads them finer.
        tick = max(0.01, min(c.heartbeat_interval / 25, c.heartbeat_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            ping: Batch | None = None  # encoded once per tick, and only if someone is due
            for link in list(self._links):
                try:
                    if not link.closed and link.session.ping_due(now=now):
                        if ping is None:
                            ping = Batch([encode(Ping(ts=int(self._wall() * 1000)))])
                        link.deliver(ping)
                    self._check_liveness(link, now=now)
                except Exception:
                    # One link's failure must not stop liveness checks for the others.
                    logger.exception("internal error checking liveness of %s", link.session.id)
                    self._cut_broken(link)

    def _schedule_expiry(self, link: Link, state: _LinkState) -> None:
        """Close ``link`` with 1008 the moment its token (plus ``jwt_leeway``) expires."""
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        expires = link.identity.expires_at
        if expires is not None:
            delay = max(0.0, expires + self.config.jwt_leeway - self._wall())
            state.expiry = asyncio.get_running_loop().call_later(delay, self._expired, link)

    def _expired(self, link: Link) -> None:
        expires = link.identity.expires_at
        if link.closed or expires is None:
            return
        if self._wall() < expires + self.config.jwt_leeway:  # the wall clock stepped back
            state = self._links.get(link)
            if state is not None:
                self._schedule_expiry(link, state)
            return
        self._cut(link, CloseCode.POLICY_VIOLATION, "token expired", abort_after=None)

    def _check_liveness(self, link: Link, *, now: float) -> None:
        if not link.closed and link.session.is_dead(now=now):
            self.stats.heartbeat_timeouts += 1
            logger.info("heartbeat timeout: closing %s", link.session.id)
            self._cut(
                link, CloseCode.INTERNAL_ERROR, "heartbeat timeout", abort_after=DEAD_PEER_ABORT
            )

    def retry_reason(self) -> str:
        """A 1013 close reason: come back after a randomised hint (load shedding)."""
        return self._hinted_reason("overloaded")

    def restart_reason(self) -> str:
        """A 1012 close reason with a randomised retry hint, spreading the fleet's return."""
        return self._hinted_reason("server restarting")

    def _hinted_reason(self, message: str) -> str:
        """A close reason carrying ``retry_after_ms``, random over ``restart_spread``."""
        spread_ms = int(self.config.restart_spread * 1000)
        return json.dumps(
            {"retry_after_ms": random.randint(0, spread_ms), "message": message},
            separators=(",", ":"),
        )

    def close_all(self, code: int = CloseCode.SERVICE_RESTART) -> None:
        """Close every connection (1012 with a retry hint by default)."""
        self.closing = True
        for link in list(self._links):
            self.close_link(link, code)

    def close_link(self, link: Link, code: int = CloseCode.SERVICE_RESTART) -> None:
        """Close one connection (1012 with a spread retry hint by default), through the
        hub: the link stops taking deliveries at once (nothing may follow a Close frame)
        and its ``connection_closed`` log names the code. The server's graceful shutdown
        calls this for each connection it holds."""
        reason = self.restart_reason() if code == CloseCode.SERVICE_RESTART else "closing"
        state = self._links.get(link)
        if state is not None:
            state.closed_with = (code, reason)
        link.close(code, reason)

    async def drain(self, timeout: float | None = None) -> None:
        """Shutdown, step one: start no new handler; wait for running ones to finish.

        Their acks go out before the 1012 that follows, so a client does not retry
        what already ran (with in-memory dedup a retry after the restart would run
        it again). Waits at most ``timeout`` (default ``shutdown_timeout``) seconds;
        handlers still running then are left to the process's exit.
        """
        self.draining = True
        self.closing = True
        running = [task for task in self._workers if not task.done()]
        if running:
            wait = self.config.shutdown_timeout if timeout is None else timeout
            _, late = await asyncio.wait(running, timeout=wait)
            if late:
                logger.warning("shutdown: %d handler(s) still running after %.1fs", len(late), wait)

    @property
    def ready(self) -> bool:
        """Serving and able to publish (the broker is reachable): ``/readyz``."""
        return not self.closing and self.broker.ready

    async def start(self) -> None:
        """Connect the broker (Redis); idempotent. The hub's ASGI app and ``tether serve``
        call it at startup; an app that mounts the hub does it through :meth:`lifespan`."""
        if not self._started:
            self._started = True
            await self.broker.start()

    async def aclose(self) -> None:
        """Stop background tasks (after :meth:`close_all`)."""
        self.closing = True
        for task in list(self._background):
            task.cancel()
        if self._owns_broker:
            try:
                # Bounded: a broker that does not let go must not keep the process alive.
                async with asyncio.timeout(self.config.shutdown_timeout):
                    await self.broker.aclose()
            except TimeoutError:
                self.stats.internal_errors += 1
                logger.error(
                    "the broker did not close within %.1fs; exiting anyway",
                    self.config.shutdown_timeout,
                )
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Lifespan for the app that mounts the hub (``FastAPI(lifespan=hub.lifespan)``).

        Mounted sub-apps get no lifespan events of their own; on shutdown this lets
        running handlers finish (:meth:`drain`), closes every client with 1012 and a
        spread retry hint, then stops the hub's tasks.
        """
        await self.start()
        yield
        await self.drain()
        self.close_all()
        await self.aclose()

    def asgi(self, *, ws_path: str = "/ws") -> Any:
        """The hub's ASGI app (``/ws``, ``POST /publish``, ``GET /healthz``, ``/metrics``).

        ``ws_path`` moves the WebSocket (and its HTTP fallback, ``<ws_path>/events`` and
        ``<ws_path>/frames``), for an app whose clients already dial a path of its own,
        e.g. ``app.mount("/", hub.asgi(ws_path="/ws/updates"))`` as the last route.
        """
        from .app import create_app

        if not WS_PATH.fullmatch(ws_path):
            raise ValueError(
                f"ws_path must be an absolute path like /ws or /ws/updates, not {ws_path!r}"
            )
        return create_app(self, ws_path=ws_path)
