"""The shared broker: topics, history, epochs and dedup in Redis, for many hub nodes.

Theory of operation
-------------------

**Storage.** Each topic is two keys sharing a Redis Cluster slot (see
:mod:`tether.server.redis_scripts` for the layout): a ``meta`` hash holding the
topic's ``epoch`` and ``head``, and a ``log`` stream whose entry ids *are* the
offsets (``<offset>-0``), each holding the encoded ``message`` frame and its
publish time. Every change is one Lua script, so it is atomic across nodes:

* **publish** creates the topic when missing (a fresh random epoch, head 0, any
  stale log deleted), starts a new epoch when the caller's ``floor`` shows Redis
  lost writes (the head is below what this node saw in that epoch), increments
  the head, builds the frame by concatenation (byte-identical to
  :func:`tether.protocol.encode`), appends it to the log capped at
  ``history_size`` entries, trims entries older than ``history_ttl`` (bounded
  work per call), refreshes the TTLs, and PUBLISHes the frame on the topic's
  channel. Offsets are therefore strictly +1 whichever node publishes.
* **replay** reads epoch, head and the needed entries in one consistent
  snapshot (creating the topic when missing, so a first subscriber anchors an
  epoch as :class:`~tether.server.broker.MemoryBroker` does); the answer is
  computed with :func:`tether.history.resume_plan`, the arithmetic
  :class:`~tether.history.TopicLog` uses, so both brokers report a resume alike.
  Ages are judged at the millisecond resolution of the frame's ``ts``; node
  clocks must agree (NTP) since each judges entries other nodes wrote.

**Live feed.** One pub/sub connection per broker, whatever the number of topics
or clients. ``retain``/``release`` (synchronous, called by the hub on a topic's
first and last local subscriber) only record the wish; a background task
reconciles the connection's subscriptions with it, then sends a PING as a
barrier: its PONG proves every SUBSCRIBE before it is in effect. Each topic
subscribed that way is then *caught up*: its newest logged entry is handed to the
feed, so a message published between the hub's replay and the subscription
taking effect is not left unseen until the next one (the hub drops repeats).

Redis pub/sub is at-most-once: a dropped connection loses messages silently,
and a wedged one loses them without even dropping. So the feed is probed: every
``probe_interval`` a PING; no PONG within ``timeout``, or any error, and the
connection is replaced (full-jitter backoff, capped at :data:`RECONNECT_CAP`),
every retained channel re-subscribed, and only then ``feed.feed_reset()`` is
called, so the hub's repair from history cannot miss what is published while it
runs. A loss without any disconnect is caught for this node's own publishes:
each is remembered with the time it completed; a PONG for a PING sent later
proves pub/sub had to deliver it first, so if it didn't, the feed is reset.

**Failures.** Every Redis error or timeout in ``publish``/``replay``/``claim``/
``settle`` raises :class:`~tether.server.broker.BrokerUnavailable` naming the
URL (never the password). Each command is bounded by ``timeout`` overall; redis-py
never retries (a retried publish could publish twice). ``ready`` is False while
either connection is down; a background probe brings it back. A broker started
while Redis is down keeps trying in the background. Background tasks are
supervised: a crash is logged and the task restarted, never silently gone.

**Dedup across nodes.** ``claim`` is one script: an existing key answers with
its value (``b""`` = :data:`~tether.server.broker.IN_PROGRESS`), a new one is set
to that marker for :data:`~tether.server.redis_scripts.CLAIM_TTL` and charged to
its charge's sorted set, which keeps at most ``dedup_window`` keys and evicts
only its own oldest (the rule of :mod:`tether.dedup`). ``settle`` stores the
reply for ``dedup_ttl``, or drops the claim.

**Memory.** Per topic: about ``history_size`` x (frame size + ~40 B of stream
overhead) for the log, which expires ``history_ttl`` after the last publish, plus
~100 B of meta, which expires ``topic_ttl`` after the last publish or resume.
Per message id: its reply for ``dedup_ttl``; per charge at most ``dedup_window``
ids. Everything in Redis has a TTL, so there is no topic limit
(:class:`~tether.server.broker.TooManyTopics` is never raised); this node holds
only its retained topics' bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..backoff import backoff_delay
from ..config import HubConfig
from ..history import Entry, Replay
from ..protocol import Cursor, Message, encode, message_envelope
from .broker import BrokerUnavailable, LiveFeed, new_epoch
from .redis_scripts import (
    CONNECTION_ERRORS,
    Topics,
    check_prefix,
    check_topic_options,
    command_client,
    describe,
    feed_connection_factory,
    live_channel,
    redact_url,
    unavailable,
)
from .stats import Histogram

logger = logging.getLogger("tether.redis")

_DEFAULTS: Final = HubConfig()

#: Upper bound of the feed's reconnect delay (full jitter): a Redis back from a restart
#: is followed within a few seconds, and many nodes don't reconnect in lockstep.
RECONNECT_CAP: Final = 3.0
#: First reconnect delay ceiling: a blip (CLIENT KILL, a failover) is repaired at once.
RECONNECT_BASE: Final = 0.05
#: Channels per SUBSCRIBE/UNSUBSCRIBE command: bounds one command's size when thousands
#: of topics are (re)subscribed at once.
SUBSCRIBE_BATCH: Final = 256
#: Topics caught up per round trip (a pipeline of XREVRANGE ... COUNT 1).
CATCHUP_BATCH: Final = 64
#: Publish round-trip buckets (s): Redis answers in well under a millisecond on a LAN;
#: the top buckets show a struggling one long before ``redis_timeout`` trips.
PUBLISH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The publish time of a frame the scripts wrote; the first match is the real field,
# as neither topic nor epoch can hold a quote.
_TS = re.compile(rb',"ts":(-?[0-9]{1,16}),"data":')


@dataclass(slots=True)
class RedisStats:
    """Counters of a :class:`RedisBroker`, for the hub's ``/metrics``."""

    #: Times the pub/sub connection was re-established after a loss (each one resets the feed).
    pubsub_reconnects: int = 0
    #: Publishes/replays that created or reset an epoch where one existed or was expected
    #: (flushed or failed-over Redis, expired topic, rollback).
    epoch_changes: int = 0
    #: ``feed.feed_reset()`` calls: reconnects plus lost notifications of own publishes.
    feed_resets: int = 0
    #: Operations that raised :class:`BrokerUnavailable`.
    unavailable: int = 0
    #: Pub/sub messages on a Tether channel that were not a Tether frame (dropped).
    foreign_messages: int = 0
    #: Round trip of successful publishes, seconds.
    publish_seconds: Histogram = field(default_factory=lambda: Histogram.of(PUBLISH_BUCKETS))


class _ProbeTimeout(RedisTimeoutError):
    """No PONG on the pub/sub connection within ``timeout``: it is presumed wedged."""


class RedisBroker:
    """The shared broker: every hub node using the same Redis (and prefix) shares topics.

    See the module docstring for how it works. ``start()`` before use, ``aclose()`` at
    the end; ``bind(feed)`` to receive the live entries of retained topics.
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int,
        history_ttl: float,
        prefix: str = _DEFAULTS.redis_prefix,
        topic_ttl: float = _DEFAULTS.redis_topic_ttl,
        timeout: float = _DEFAULTS.redis_timeout,
        probe_interval: float = _DEFAULTS.redis_probe_interval,
        dedup_window: int = _DEFAULTS.dedup_window,
        dedup_ttl: float = _DEFAULTS.dedup_ttl,
    ) -> None:
        check_topic_options(
            "RedisBroker",
            url,
            history_size=history_size,
            history_ttl=history_ttl,
            topic_ttl=topic_ttl,
            timeout=timeout,
        )
        if probe_interval <= 0 or dedup_ttl <= 0:
            raise ValueError("probe_interval and dedup_ttl must be > 0")
        if dedup_window < 1:
            raise ValueError("dedup_window must be >= 1")
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.prefix = check_prefix(prefix)
        self.topic_ttl = topic_ttl
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.dedup_window = dedup_window
        self.dedup_ttl = dedup_ttl
        self.stats = RedisStats()
        # Parsing the URL here (no I/O yet) makes a malformed one fail at construction.
        self._client = command_client(url, timeout=timeout, name="tether")
        self._topics = Topics(self._client, self.prefix)
        self._feed_factory = feed_connection_factory(url, timeout=timeout, name="tether-feed")
        self._channel_prefix = live_channel(self.prefix, "").encode()
        self._feed: LiveFeed | None = None
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._command_up = False
        self._feed_up = False
        self._ready_changed = asyncio.Event()
        # --- subscriptions: what the hub wants vs what the connection has ---
        #: Topics with local subscribers (the hub's wish).
        self._retained: set[str] = set()
        #: Topics whose wish changed since the connection was last reconciled.
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        #: Topics SUBSCRIBEd on the current connection, and those confirmed in effect.
        self._subscribed: set[str] = set()
        self._active: set[str] = set()
        #: Bumped by every retain/release; ``_applied`` once a reconcile is confirmed.
        self._wanted = 0
        self._applied = 0
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Topics to catch up (their newest entry handed to the feed), a subset of retained.
        self._catchup: set[str] = set()
        self._catchup_event = asyncio.Event()
        # --- loss detection ---
        #: Per retained topic, the furthest (epoch, offset) the feed passed on.
        self._seen: dict[str, tuple[str, int]] = {}
        #: Per retained topic, this node's newest publish not yet seen on the feed,
        #: with the loop time it completed.
        self._unseen: dict[str, tuple[str, int, float]] = {}
        #: Outstanding PINGs on the feed: token -> (loop time sent, pong future).
        self._pings: dict[bytes, tuple[float, asyncio.Future[None]]] = {}
        self._ping_ids = itertools.count()
        self._send_lock = asyncio.Lock()
        #: Pub/sub connections that came up, and whether the current one did.
        self._sessions = 0
        self._session_up = False

    @classmethod
    def from_config(cls, config: HubConfig) -> RedisBroker:
        """The broker a hub with ``config`` (whose ``redis_url`` is set) uses."""
        return cls(
            config.redis_url,
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            prefix=config.redis_prefix,
            topic_ttl=config.redis_topic_ttl,
            timeout=config.redis_timeout,
            probe_interval=config.redis_probe_interval,
            dedup_window=config.dedup_window,
            dedup_ttl=config.dedup_ttl,
        )

    def __repr__(self) -> str:
        return (
            f"<RedisBroker {redact_url(self.url)} prefix={self.prefix!r} ready={self.ready} "
            f"retained={len(self._retained)}>"
        )

    def __len__(self) -> int:
        return len(self._retained)

    @property
    def ready(self) -> bool:
        """False while the command connection or the pub/sub connection is down."""
        return self._command_up and self._feed_up and not self._closed

    @property
    def feed_ready(self) -> bool:
        """True while the pub/sub feed is connected, subscribed and answering probes."""
        return self._feed_up and not self._closed

    @property
    def shared(self) -> bool:
        return True

    def bind(self, feed: LiveFeed) -> None:
        self._feed = feed

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks and wait (at most ``timeout``) until ready.

        Idempotent. If Redis can't be reached yet this returns anyway, not ready, and
        the broker keeps connecting in the background.
        """
        if self._closed:
            raise RuntimeError("this RedisBroker was closed")
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._supervise("feed", self._feed_loop), name="tether-redis-feed"),
            asyncio.create_task(
                self._supervise("probe", self._probe_loop), name="tether-redis-probe"
            ),
            asyncio.create_task(
                self._supervise("catch-up", self._catchup_loop), name="tether-redis-catchup"
            ),
        ]
        try:
            await self.wait_ready(self.timeout)
        except TimeoutError:
            logger.warning(
                "Redis at %s is not reachable yet; the hub is not ready and keeps trying",
                redact_url(self.url),
            )

    async def wait_ready(self, timeout: float) -> None:
        """Wait until :attr:`ready` (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                self._ready_changed.clear()
                await self._ready_changed.wait()

    async def aclose(self) -> None:
        """Stop the background tasks and close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # Each step is bounded: a shutdown must end even if a task or redis-py hangs
        # (seen once in CI, cause unknown). What did not stop is logged with its stack.
        await self._bounded("stopping the background tasks", tasks)
        for _, future in self._sync_waiters:
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker was closed"))
        self._sync_waiters.clear()
        await self._bounded(
            "closing the command connections",
            [asyncio.create_task(self._client.aclose(), name="tether-redis-close")],
        )
        await self._bounded(
            "closing the pub/sub pool",
            [asyncio.create_task(self._feed_factory.disconnect(), name="tether-redis-close")],
        )
        self._ready_changed.set()

    async def _bounded(self, what: str, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """Wait at most ``timeout`` + 1 s for ``tasks`` (one step of :meth:`aclose`),
        logging, not raising, what failed or did not end: closing goes on either way.

        ``asyncio.wait``, not ``gather`` under a timeout: a gather does not return until
        every task has ended, so one that ignores cancellation would hang it for ever.
        """
        if not tasks:
            return
        limit = self.timeout + 1.0
        done, pending = await asyncio.wait(tasks, timeout=limit)
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, RedisError | OSError):  # a connection already gone: expected
                logger.debug("closing the Redis broker: %s failed: %s", what, describe(exc))
            elif exc is not None:
                logger.error("closing the Redis broker: %s failed", what, exc_info=exc)
        if pending:
            stacks = [
                f"{task.get_name()}:\n{_awaiting(task)}"
                for task in asyncio.all_tasks()
                if task.get_name().startswith("tether-redis") and not task.done()
            ]
            for task in pending:
                task.cancel()  # and left to end (or not) on its own
            logger.error(
                "closing the Redis broker: %s did not end within %.1fs; going on. "
                "Still running:\n%s",
                what,
                limit,
                "\n".join(stacks),
            )

    # --- topics -------------------------------------------------------------------------------

    async def publish(
        self, topic: str, data: msgspec.Raw, *, now: float, floor: Cursor | None = None
    ) -> Entry:
        loop = asyncio.get_running_loop()
        started = loop.time()
        epoch = new_epoch()
        try:
            async with asyncio.timeout(self.timeout):
                epoch, offset, change = await self._topics.publish(
                    topic,
                    bytes(data),
                    now=now,
                    new_epoch=epoch,
                    floor=floor,
                    history_size=self.history_size,
                    history_ttl=self.history_ttl,
                    topic_ttl=self.topic_ttl,
                )
        except (*CONNECTION_ERRORS, RedisError) as exc:
            raise self._failed(f"publish to {topic!r}", exc) from None
        done = loop.time()
        self._command_ok()
        self.stats.publish_seconds.observe(done - started)
        if change.unexpected(known=floor is not None):
            self.stats.epoch_changes += 1
            logger.warning(
                "topic %r starts epoch %s (%s): its history in Redis was lost",
                topic,
                epoch,
                change.name.lower(),
            )
        frame = encode(
            Message(topic=topic, epoch=epoch, offset=offset, ts=int(now * 1000), data=data)
        )
        self._track_own(topic, epoch, offset, done)
        return Entry(offset, now, frame, epoch)

    async def replay(
        self, topic: str, resume: Cursor | None, *, now: float, rewind: int = 0
    ) -> Replay:
        try:
            async with asyncio.timeout(self.timeout):
                replay, change = await self._topics.replay(
                    topic,
                    resume,
                    now=now,
                    rewind=rewind,
                    new_epoch=new_epoch(),
                    history_size=self.history_size,
                    history_ttl=self.history_ttl,
                    topic_ttl=self.topic_ttl,
                )
        except (*CONNECTION_ERRORS, RedisError) as exc:
            raise self._failed(f"resume of {topic!r}", exc) from None
        self._command_ok()
        if change.unexpected(known=resume is not None):
            self.stats.epoch_changes += 1
            logger.warning(
                "topic %r starts epoch %s (%s) on resume: its history in Redis was lost",
                topic,
                replay.epoch,
                change.name.lower(),
            )
        return replay

    def retain(self, topic: str) -> None:
        if topic not in self._retained:
            self._retained.add(topic)
            self._wish_changed(topic)

    def release(self, topic: str) -> None:
        if topic in self._retained:
            self._retained.discard(topic)
            self._seen.pop(topic, None)
            self._unseen.pop(topic, None)
            self._catchup.discard(topic)
            self._wish_changed(topic)

    def release_all(self) -> None:
        for topic in list(self._retained):
            self.release(topic)

    async def synced(self, timeout: float | None = None) -> None:
        """Wait until every ``retain``/``release`` made so far is in effect in Redis.

        Not needed for correctness (the feed catches new subscriptions up); useful to
        know a topic's live feed is flowing. ``timeout`` defaults to ``timeout``.
        """
        target = self._wanted
        if self._applied >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (target, future)
        self._sync_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                await future
        finally:
            # Gone at once, so callers timing out during a long outage can't pile up.
            with contextlib.suppress(ValueError):
                self._sync_waiters.remove(waiter)

    # --- dedup --------------------------------------------------------------------------------

    async def claim(self, key: str, *, charge: str, now: float) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._topics.claim(
                    key, charge=charge, now=now, window=self.dedup_window, ttl=self.dedup_ttl
                )
        except (*CONNECTION_ERRORS, RedisError) as exc:
            raise self._failed("dedup lookup", exc) from None
        self._command_ok()
        return reply

    async def settle(self, key: str, reply: bytes | None) -> None:
        """Record ``reply`` for a claimed ``key`` (``None`` drops the claim).

        Raises ``ValueError`` for an empty reply (it would read as in progress) and
        :class:`BrokerUnavailable`; a claim left unsettled expires after
        :data:`~tether.server.redis_scripts.CLAIM_TTL`.
        """
        try:
            async with asyncio.timeout(self.timeout):
                await self._topics.settle(key, reply, ttl=self.dedup_ttl)
        except (*CONNECTION_ERRORS, RedisError) as exc:
            raise self._failed("dedup record", exc) from None
        self._command_ok()

    # --- command connection state -------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> BrokerUnavailable:
        self.stats.unavailable += 1
        if isinstance(exc, CONNECTION_ERRORS):
            self._command_down(exc)
        else:
            # Redis answered, with an error (OOM, READONLY after a failover, a script
            # error): the operation failed, the connection is fine.
            logger.error("%s: Redis at %s refused: %s", what, redact_url(self.url), describe(exc))
        return unavailable(self.url, what, exc)

    def _command_ok(self) -> None:
        if not self._command_up:
            self._command_up = True
            logger.info("Redis at %s is reachable", redact_url(self.url))
            self._ready_changed.set()

    def _command_down(self, exc: BaseException) -> None:
        if self._command_up:
            self._command_up = False
            logger.warning("Redis at %s is unreachable: %s", redact_url(self.url), describe(exc))
            self._ready_changed.set()

    def _set_feed_up(self, up: bool) -> None:
        if self._feed_up != up:
            self._feed_up = up
            self._ready_changed.set()

    # --- background tasks ---------------------------------------------------------------------

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` for ever: a crash (a bug; Redis errors are handled inside) is
        logged and the task restarted after a bounded backoff."""
        crashes = 0
        while True:
            try:
                await body()
                logger.error("redis broker task %r returned; restarting it", name)
            except Exception:
                logger.exception("redis broker task %r crashed; restarting it", name)
            crashes += 1
            await asyncio.sleep(
                backoff_delay(min(crashes, 16), base=0.1, factor=2.0, cap=RECONNECT_CAP)
            )

    async def _probe_loop(self) -> None:
        """Ping on the command connection, so ``ready`` follows Redis without traffic."""
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._client.ping()
            except CONNECTION_ERRORS as exc:
                self._command_down(exc)
            except RedisError as exc:  # e.g. LOADING, NOAUTH: up, but not usable
                self._command_down(exc)
            else:
                self._command_ok()
            await asyncio.sleep(self.probe_interval)

    async def _feed_loop(self) -> None:
        """Keep one pub/sub connection: connect, run it until it fails, back off, again."""
        attempt = 0
        while True:
            try:
                await self._feed_session()
            except (*CONNECTION_ERRORS, RedisError) as exc:
                # Loud for a lost feed and the first failed attempt, quiet while retrying.
                level = logging.WARNING if self._session_up or attempt == 0 else logging.DEBUG
                logger.log(
                    level, "Redis pub/sub at %s lost: %s", redact_url(self.url), describe(exc)
                )
            if self._session_up:
                attempt = 0  # it worked for a while: the next loss starts from a short delay
            await asyncio.sleep(
                backoff_delay(attempt, base=RECONNECT_BASE, factor=2.0, cap=RECONNECT_CAP)
            )
            attempt += 1

    async def _feed_session(self) -> None:
        """One pub/sub connection's life: raises the error that ended it."""
        conn: AbstractConnection = self._feed_factory.make_connection()  # type: ignore[no-untyped-call]
        self._session_up = False
        try:
            async with asyncio.timeout(self.timeout):
                await conn.connect()  # type: ignore[no-untyped-call]
            # A new connection has no subscriptions: every retained topic is to subscribe.
            self._subscribed = set()
            self._active = set()
            self._dirty = set(self._retained)
            tasks = [
                asyncio.create_task(self._read(conn), name="tether-redis-feed-read"),
                asyncio.create_task(self._reconcile_loop(conn), name="tether-redis-feed-sync"),
                asyncio.create_task(self._probe_feed(conn), name="tether-redis-feed-probe"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises the error that ended the session
                raise RedisConnectionError("pub/sub task ended")
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._set_feed_up(False)
            self._subscribed = set()
            self._active = set()
            for _, future in self._pings.values():
                future.cancel()
            self._pings.clear()
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)

    def _came_up(self) -> None:
        """The feed's subscriptions are confirmed on a fresh connection."""
        self._sessions += 1
        self._session_up = True
        self._set_feed_up(True)
        if self._sessions > 1:
            self.stats.pubsub_reconnects += 1
            logger.info("Redis pub/sub at %s re-established", redact_url(self.url))
        if self._sessions > 1 or self._retained:
            # Anything may have been published while there was no subscription: the hub
            # checks every retained topic against history (which covers any catch-up).
            self._catchup.clear()
            self._reset_feed()

    async def _send(self, conn: AbstractConnection, *args: Any) -> None:
        async with self._send_lock:
            if not conn.is_connected:
                # redis-py would silently reconnect, without our subscriptions.
                raise RedisConnectionError("pub/sub connection lost")
            await conn.send_command(*args, check_health=False)

    async def _ping(self, conn: AbstractConnection) -> None:
        """PING and wait for its PONG (``_ProbeTimeout`` after ``timeout``)."""
        token = b"tether-%d" % next(self._ping_ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Stamped before sending: every publish completed before this instant was
        # PUBLISHed by Redis before it reads this PING, so its message precedes the PONG.
        self._pings[token] = (loop.time(), future)
        try:
            await self._send(conn, "PING", token)
            try:
                async with asyncio.timeout(self.timeout):
                    await future
            except TimeoutError:
                raise _ProbeTimeout(f"no PONG on pub/sub within {self.timeout}s") from None
        finally:
            self._pings.pop(token, None)

    async def _probe_feed(self, conn: AbstractConnection) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self._ping(conn)

    async def _reconcile_loop(self, conn: AbstractConnection) -> None:
        """Bring the connection's subscriptions to the hub's wish, whenever it changes."""
        first = True
        while True:
            self._dirty_event.clear()
            wanted = self._wanted
            added = await self._reconcile(conn)
            await self._ping(conn)  # barrier: the SUBSCRIBEs above are now in effect
            added &= self._subscribed
            self._active |= added
            self._synced_to(wanted)
            if first:
                first = False
                self._came_up()
            elif added:
                self._catchup |= added & self._retained
                self._catchup_event.set()
            await self._dirty_event.wait()

    async def _reconcile(self, conn: AbstractConnection) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        add = sorted(t for t in dirty if t in self._retained and t not in self._subscribed)
        drop = sorted(t for t in dirty if t not in self._retained and t in self._subscribed)
        for chunk in _chunks(add, SUBSCRIBE_BATCH):
            await self._send(conn, "SUBSCRIBE", *(live_channel(self.prefix, t) for t in chunk))
            self._subscribed.update(chunk)
        for chunk in _chunks(drop, SUBSCRIBE_BATCH):
            await self._send(conn, "UNSUBSCRIBE", *(live_channel(self.prefix, t) for t in chunk))
            self._subscribed.difference_update(chunk)
            self._active.difference_update(chunk)
        return set(add)

    def _wish_changed(self, topic: str) -> None:
        self._dirty.add(topic)
        self._wanted += 1
        self._dirty_event.set()

    def _synced_to(self, wanted: int) -> None:
        self._applied = max(self._applied, wanted)
        waiting = []
        for target, future in self._sync_waiters:
            if target <= self._applied:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                waiting.append((target, future))
        self._sync_waiters = waiting

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            response = await conn.read_response(timeout=math.inf)
            if isinstance(response, bytes):
                # A PONG while no channel is subscribed is the bare token.
                self._on_pong(response)
            elif isinstance(response, list) and len(response) >= 2:
                kind = response[0]
                if kind == b"message" and len(response) == 3:
                    self._on_message(response[1], response[2])
                elif kind == b"pong":
                    self._on_pong(response[1])
                # subscribe/unsubscribe confirmations: the barrier PING covers them

    def _on_pong(self, token: bytes) -> None:
        ping = self._pings.pop(token, None)
        if ping is None:
            return
        sent, future = ping
        if not future.done():
            future.set_result(None)
        lost = [t for t, (_, _, completed) in self._unseen.items() if completed < sent]
        if lost:
            logger.warning(
                "Redis pub/sub did not deliver this node's own publish to %d topic(s) "
                "(e.g. %r): repairing every retained topic from history",
                len(lost),
                lost[0],
            )
            self._reset_feed()

    def _on_message(self, channel: bytes, frame: bytes) -> None:
        if not channel.startswith(self._channel_prefix):
            return
        try:
            topic = channel[len(self._channel_prefix) :].decode()
        except UnicodeDecodeError:
            return
        if topic not in self._retained:
            return  # released: its UNSUBSCRIBE may still be on its way
        envelope = message_envelope(frame)
        ts = _TS.search(frame)
        if envelope is None or ts is None or envelope[0] != topic:
            self.stats.foreign_messages += 1
            if self.stats.foreign_messages == 1 or self.stats.foreign_messages % 1000 == 0:
                logger.warning(
                    "dropped %d message(s) on Tether channels that are not Tether frames "
                    "(latest on %r): is something else publishing there?",
                    self.stats.foreign_messages,
                    channel,
                )
            return
        _, epoch, offset = envelope
        self._deliver(topic, Entry(offset, int(ts.group(1)) / 1000, frame, epoch))

    def _deliver(self, topic: str, entry: Entry) -> None:
        self._seen[topic] = (entry.epoch, entry.offset)
        unseen = self._unseen.get(topic)
        if unseen is not None and unseen[0] == entry.epoch and entry.offset >= unseen[1]:
            del self._unseen[topic]
        if self._feed is None:
            return
        try:
            self._feed.live(topic, (entry,))
        except Exception:
            logger.exception("the live feed failed on topic %r offset %d", topic, entry.offset)

    def _reset_feed(self) -> None:
        self._unseen.clear()
        self.stats.feed_resets += 1
        if self._feed is None:
            return
        try:
            self._feed.feed_reset()
        except Exception:
            logger.exception("the live feed failed to reset")

    def _track_own(self, topic: str, epoch: str, offset: int, completed: float) -> None:
        """Remember an own publish until the feed passes it on (see ``_on_pong``)."""
        if topic not in self._active:
            return  # not subscribed yet: the catch-up after subscribing covers it
        seen = self._seen.get(topic)
        if seen is not None and seen[0] == epoch and seen[1] >= offset:
            return  # pub/sub was faster than the publish's own reply
        self._unseen[topic] = (epoch, offset, completed)

    async def _catchup_loop(self) -> None:
        """Hand each newly subscribed topic's newest entry to the feed (a repeat, or a
        head that shows the hub what it missed before the subscription took effect)."""
        while True:
            await self._catchup_event.wait()
            self._catchup_event.clear()
            while self._catchup:
                batch = [self._catchup.pop() for _ in range(min(CATCHUP_BATCH, len(self._catchup)))]
                try:
                    async with asyncio.timeout(self.timeout):
                        latest = await self._topics.latest(batch)
                except (*CONNECTION_ERRORS, RedisError) as exc:
                    self._catchup |= {t for t in batch if t in self._retained}
                    if isinstance(exc, CONNECTION_ERRORS):
                        self._command_down(exc)
                    await asyncio.sleep(self.probe_interval)
                    continue
                self._command_ok()
                for topic, row in zip(batch, latest, strict=True):
                    if row is None or topic not in self._retained:
                        continue
                    offset, t_ms, frame = row
                    envelope = message_envelope(frame)
                    if envelope is not None and envelope[0] == topic and envelope[2] == offset:
                        self._deliver(topic, Entry(offset, t_ms / 1000, frame, envelope[1]))


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits: its chain of awaits, outermost first (``get_stack`` shows
    only the task's own coroutine)."""
    lines = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "\n".join(lines)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
