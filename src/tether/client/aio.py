"""The asyncio client: a thin driver around the sans-I/O session and lifecycle.

It owns the socket (``websockets``), the clock and the timers. Every protocol
decision is made by :class:`~tether.client.session.ClientSession` (frames in,
events and frames out), every connection decision (attempts, backoff, circuit,
close codes, counters) by :class:`~tether.client.lifecycle.Lifecycle`, and every
state change goes through :class:`~tether.client.state.StateMachine`'s table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..config import ClientConfig, from_env
from ..errors import (
    ClientClosed,
    CloseCode,
    MessageDropped,
    MessageExpired,
    MessageTooBig,
    NackError,
    SubscribeRefused,
    TetherError,
)
from ..outbox import Outbox, OutboxItem
from ..protocol import PROTOCOL_VERSION, Auth, Cursor, Gap, encode
from .lifecycle import (
    Failure,
    Lifecycle,
    handshake_closed,
    handshake_refused,
    parse_close_hint,
    refresh_delay,
)
from .session import (
    ClientSession,
    Delivery,
    Event,
    Resolved,
    Resync,
    ServerError,
    SubscriptionConfirmed,
    SubscriptionRefused,
    Welcomed,
)
from .state import State

logger = logging.getLogger("tether.client")

#: Largest hub frame accepted. Hub frames are bounded by what publishers may send
#: (the hub's ``max_frame_bytes``, 64 KiB by default) plus the envelope; 4 MiB leaves
#: room for apps that raise that limit while still bounding a hostile hub.
MAX_INBOUND_FRAME = 4 * 1024 * 1024

#: Room for a ``message`` frame's envelope around a payload of the hub's ``max_frame_bytes``
#: (topic <= 200 characters, epoch <= 64, offset, ts and the keys): the reader's cap is
#: raised to fit what the hub says it may send, so no valid message closes us with 1009.
ENVELOPE_ALLOWANCE = 1024
#: The most the reader's cap is ever raised to, whatever a hub advertises: bounds memory
#: against a hostile hub.
MAX_INBOUND_CEILING = 64 * 1024 * 1024

#: Events (deliveries, resyncs) read but not yet handled by the app. Handlers run on
#: their own task so a slow handler never delays pong replies; when this many are
#: waiting the reader stops reading, which pushes back to the hub (which cuts a
#: consumer that stays behind with 4008, and it resumes) instead of buffering forever.
INBOX_SIZE = 1024

MessageHandler = Callable[[Delivery], Awaitable[None] | None]
ResyncHandler = Callable[[str, list[Gap]], Awaitable[None] | None]
StateHandler = Callable[[State, State], None]
ReconnectHandler = Callable[[], Awaitable[None] | None]
ErrorHandler = Callable[[str, str], Awaitable[None] | None]
TokenSource = Callable[[], Awaitable[str] | str]

#: ``on_error`` code for a bug inside the client itself. It is logged with its traceback
#: and the connection is failed and re-established, so no task is left dead behind a
#: ``connected`` state; subscriptions resume from their cursors.
CLIENT_ERROR = "client_error"

#: Async ``on_error`` callbacks still running; past it new ones are logged and skipped, so
#: a hung callback and a burst of errors cannot pile up tasks without bound.
MAX_ERROR_CALLBACKS = 64


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, read without verifying it (the hub verifies)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


class ConnectFailed(TetherError):
    """An attempt did not produce a usable session (``failure`` says why, for the lifecycle)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class ClientMetrics:
    """A snapshot of the client's health (the fields PRODUCT.md lists)."""

    state: State
    reconnect_attempts: int
    total_reconnects: int
    failed_reconnects: int
    successful_connects: int
    heartbeat_failures: int
    circuit_breaker_trips: int
    last_heartbeat: float | None
    is_circuit_open: bool
    messages_received: int
    messages_recovered: int
    duplicates_dropped: int
    resyncs: int
    undeliverable: int
    outbox_size: int
    rtt: float | None
    next_retry_in: float | None
    last_error: str | None


class _Reconnected:
    """Inbox marker: run ``on_reconnect`` in order with the deliveries around it."""


_RECONNECTED = _Reconnected()
_Queued = Delivery | Resync | SubscriptionConfirmed | _Reconnected


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class Client:
    """A resilient Tether client.

    ``subscribe`` topics with a handler, ``send``/``publish`` through an outbox,
    and let it reconnect: subscriptions resume from their cursors, loss is
    reported through ``on_resync``, client messages are retried until acked.

    Options are the fields of :class:`~tether.config.ClientConfig`, given as
    keywords or ``TETHER_*`` environment variables.
    """

    def __init__(
        self,
        url: str,
        *,
        on_state_change: StateHandler | None = None,
        on_reconnect: ReconnectHandler | None = None,
        on_resync: ResyncHandler | None = None,
        on_error: ErrorHandler | None = None,
        token: str | None = None,
        get_token: TokenSource | None = None,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        """``token`` is sent as ``Authorization: Bearer``; ``get_token`` (sync or async) is
        asked for a fresh one before each connection attempt and before expiry, and lets
        the client retry after an auth failure (1008) instead of giving up. ``clock``
        (monotonic seconds) is what every timer of the client reads: a test can make it
        jump, as a machine waking from sleep does."""
        self.url = url
        self._clock = clock
        self._token = token
        self.get_token = get_token
        self.config = config if config is not None else from_env(ClientConfig, **options)
        self.on_state_change = on_state_change
        self.on_reconnect = on_reconnect
        self.on_resync = on_resync
        self.on_error = on_error
        self._life = Lifecycle(self.config, can_refresh=get_token is not None)
        self._life.machine.listen(self._state_changed)
        self._session = ClientSession(
            outbox=Outbox(max_size=self.config.outbox_size, policy=self.config.outbox_policy)
        )
        self._handlers: dict[str, MessageHandler] = {}
        #: ``subscribe`` calls waiting for the hub's answer on the current connection.
        self._confirming: dict[str, list[asyncio.Future[None]]] = {}
        self._inbox: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._dispatcher: asyncio.Task[None] | None = None
        self._error_callbacks: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._state_waiters: list[tuple[set[State], asyncio.Future[State]]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pump_task: asyncio.Future[None] | None = None
        self._next_attempt_at: float | None = None
        #: The last client-side failure that is not a connection's (see _internal_error).
        self._client_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"<Client {self.url} state={self.state.value} attempts={self._life.attempts} "
            f"topics={len(self._handlers)} outbox={len(self._session.outbox)}>"
        )

    # --- public API ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._life.state

    @property
    def session_id(self) -> str | None:
        """The hub's id for the current connection (``welcome.session``, as in its logs).

        ``None`` while not connected.
        """
        return self._session.session_id

    @property
    def metrics(self) -> ClientMetrics:
        c = self._session.counters
        life = self._life
        now = self._clock()
        next_in = None
        if self._next_attempt_at is not None:
            next_in = max(0.0, self._next_attempt_at - now)
        return ClientMetrics(
            state=self.state,
            reconnect_attempts=life.attempts,
            total_reconnects=life.total_reconnects,
            failed_reconnects=life.failed_reconnects,
            successful_connects=life.successful_connects,
            heartbeat_failures=life.heartbeat_failures,
            circuit_breaker_trips=life.circuit_trips,
            last_heartbeat=None
            if c.last_heartbeat is None
            else time.time() - (now - c.last_heartbeat),
            is_circuit_open=self.state is State.FAILED,
            messages_received=c.messages_received,
            messages_recovered=c.messages_recovered,
            duplicates_dropped=c.duplicates_dropped,
            resyncs=c.resyncs,
            undeliverable=c.undeliverable,
            outbox_size=len(self._session.outbox),
            rtt=c.rtt,
            next_retry_in=next_in,
            last_error=self._client_error or life.last_error,
        )

    def cursor(self, topic: str) -> Cursor | None:
        """The position of the last message of ``topic`` handed to the app.

        Persist it and pass it back as ``subscribe(..., resume=cursor)`` to resume
        after a process restart.
        """
        return self._session.app_cursor(topic)

    def is_live(self, topic: str) -> bool:
        """True while ``topic`` is subscribed on a live connection (not stale)."""
        return self._session.is_live(topic)

    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        if self._task is not None:
            return
        self._life.start()
        loop = asyncio.get_running_loop()
        self._start_dispatcher()
        self._task = loop.create_task(self._run(), name="tether-client")

    async def connect(self, *, timeout: float | None = None) -> None:
        """Start, and wait until connected (``TimeoutError`` after ``timeout`` seconds)."""
        await self.start()
        await self.wait_for(State.CONNECTED, timeout=timeout)

    async def wait_for(self, *states: State, timeout: float | None = None) -> State:
        """Wait until the client is in one of ``states``; returns the state reached."""
        if self.state in states:
            return self.state
        future: asyncio.Future[State] = asyncio.get_running_loop().create_future()
        entry = (set(states), future)
        self._state_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            with contextlib.suppress(ValueError):
                self._state_waiters.remove(entry)

    async def subscribe(
        self,
        topic: str,
        handler: MessageHandler,
        *,
        resume: Cursor | None = None,
        rewind: int = 0,
    ) -> None:
        """Receive ``topic``'s messages in order, exactly once, in ``handler``.

        ``resume`` starts from a cursor saved earlier (see :meth:`cursor`); without it
        the subscription starts live, after the last ``rewind`` messages the topic's
        history still holds (``rewind=1``: the current value). On a live connection this
        returns once the hub has confirmed the subscription, and raises
        :class:`SubscribeRefused` (``code`` ``forbidden``, ``too_many_subscriptions``…)
        if it refused it; offline it returns at once, the subscription is made on
        connect, and a refusal then goes to ``on_error``. A refused topic is dropped:
        it is not re-subscribed on reconnect.
        A refusal that is not final (``unavailable`` while the hub's Redis is away) is
        retried and waited for; bound the wait with ``asyncio.timeout`` if it matters.
        """
        self._handlers[topic] = handler
        frame = self._session.subscribe(topic, resume=resume, rewind=rewind)
        if frame is None:
            return
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(topic, []).append(answer)
        self._session.pace([frame])
        await self._pump()
        # A dropped connection settles it too: the subscription is restored on reconnect.
        await answer

    async def unsubscribe(self, topic: str) -> None:
        self._handlers.pop(topic, None)
        frame = self._session.unsubscribe(topic)
        if frame is not None:
            self._session.pace([frame])
            await self._pump()

    async def send(
        self,
        event: str,
        data: Any = None,
        *,
        key: str | None = None,
        ttl: float | None = None,
        wait_ack: bool = True,
    ) -> Any:
        """Send ``data`` to the hub's ``event`` handler, effectively once.

        Queued in the outbox (online or not) until acked. With ``wait_ack`` returns
        the handler's result or raises :class:`NackError`, :class:`MessageExpired`,
        :class:`MessageDropped` or :class:`ClientClosed`; without, returns a future.
        Raises :class:`OutboxFull` at once when the outbox refuses it.
        """
        item = self._session.make_send(event, data, expires_at=self._expiry(ttl), key=key)
        return await self._submit(item, wait_ack)

    async def publish(
        self, topic: str, data: Any = None, *, ttl: float | None = None, wait_ack: bool = True
    ) -> Any:
        """Publish to ``topic`` through the hub; the ack's result holds offset and epoch."""
        item = self._session.make_publish(topic, data, expires_at=self._expiry(ttl))
        return await self._submit(item, wait_ack)

    def reconnect(self) -> None:
        """Reconnect now, whatever the state (resets the retry counter and the circuit)."""
        if self.state is State.CLOSED:
            raise ClientClosed("client is closed")
        self._life.request_retry()
        self._wake.set()
        if self._ws is not None:
            self._ws.transport.abort()

    def disconnect(self) -> None:
        """Drop the current connection as if the network failed (for testing recovery)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        """Close for good: the connection with 1000, pending sends with ``ClientClosed``."""
        if self.state is State.CLOSED:
            return
        self._life.close()
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.close(CloseCode.NORMAL, "client closed")
        for task in (self._task, self._dispatcher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    # Supervision restarts what crashes, so this is a bug: say so, close anyway.
                    logger.exception("client task %s had crashed", task.get_name())
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._pump_timer is not None:
            self._pump_timer.cancel()
        for item in self._session.outbox.clear():
            self._fail(item, ClientClosed("client closed before the hub acknowledged"))
        for answers in self._confirming.values():
            for answer in answers:
                if not answer.done():
                    answer.set_exception(ClientClosed("client closed before the hub answered"))
        self._confirming.clear()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- outbox plumbing ----------------------------------------------------------------

    def _expiry(self, ttl: float | None) -> float:
        return self._clock() + (self.config.outbox_ttl if ttl is None else ttl)

    async def _submit(self, item: OutboxItem, wait_ack: bool) -> Any:
        if self.state is State.CLOSED:
            raise ClientClosed("client is closed")
        self._session.check_size(item)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item.waiter = future
        for displaced in self._session.outbox.add(item):
            self._fail(displaced, MessageDropped(f"message {displaced.id} displaced by policy"))
        self._schedule_expiry()
        if self._session.connected:
            await self._pump()  # the outbox's unsent items, in order, at the hub's pace
        if wait_ack:
            return await future
        future.add_done_callback(_log_unretrieved)
        return future

    def _fail(self, item: OutboxItem, exc: Exception) -> None:
        future = item.waiter
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(exc)

    def _schedule_expiry(self) -> None:
        when = self._session.outbox.next_expiry()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if when is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, when - self._clock())
            self._expiry_timer = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        for item in self._session.outbox.expire(self._clock()):
            self._fail(item, MessageExpired(f"message {item.id} expired before it was acked"))
        self._schedule_expiry()

    # --- connection loop ----------------------------------------------------------------

    def _state_changed(self, old: State, new: State) -> None:
        logger.info("state %s -> %s", old.value, new.value)
        for states, future in list(self._state_waiters):
            if new in states and not future.done():
                future.set_result(new)
        if self.on_state_change is not None:
            try:
                self.on_state_change(old, new)
            except Exception:
                logger.exception("on_state_change callback failed")

    async def _sleep(self, delay: float | None) -> None:
        """Sleep ``delay`` seconds (``None``: until woken), or until reconnect()/close()."""
        self._wake.clear()
        if self._life.retry_requested or self.state is State.CLOSED:
            return
        self._next_attempt_at = None if delay is None else self._clock() + delay
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass
        finally:
            self._next_attempt_at = None

    async def _run(self) -> None:
        # The loop of tether.client.lifecycle's theory of operation.
        attempt = True
        while self.state is not State.CLOSED:
            delay = None
            if attempt:
                try:
                    delay = await self._attempt()
                except Exception:
                    logger.exception("internal error in a connection attempt; retrying")
                    self._internal_error("connection loop")
                    delay = self._life.crashed()
            await self._sleep(delay)
            attempt = self._life.wake()

    async def _attempt(self) -> float | None:
        """One attempt (and the session if it opens); returns the delay before the next."""
        self._life.begin_attempt()
        try:
            ws = await self._open()
        except ConnectFailed as exc:
            logger.info("connect attempt %d failed: %s", self._life.attempts, exc)
            return self._life.attempt_failed(exc.failure)
        return await self._serve(ws)

    async def _fresh_token(self) -> str | None:
        if self.get_token is not None:
            result = self.get_token()
            self._token = await result if inspect.isawaitable(result) else result
        return self._token

    async def _open(self) -> ClientConnection:
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                token = await self._fresh_token()
                headers = {"Authorization": f"Bearer {token}"} if token else None
                ws = await connect(
                    self.url,
                    open_timeout=None,
                    ping_interval=None,  # liveness is the application heartbeat
                    # Our close() is a courtesy: the reconnect logic never waits for it long.
                    close_timeout=2,
                    max_size=MAX_INBOUND_FRAME,
                    compression=None,
                    proxy=None,
                    user_agent_header=f"tether-python/{PROTOCOL_VERSION}",
                    additional_headers=headers,
                )
                try:
                    raw = await ws.recv(decode=False)
                except ConnectionClosed as exc:
                    raise self._closed_failure(exc.rcvd.code if exc.rcvd else 1006, exc) from None
        except InvalidStatus as exc:
            failure = handshake_refused(
                exc.response.status_code,
                exc.response.headers.get("Retry-After"),
                can_refresh=self.get_token is not None,
            )
            raise ConnectFailed(failure) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectFailed(Failure(f"{type(exc).__name__}: {exc}")) from None
        events, _ = self._session.receive(raw, now=self._clock())
        if not any(isinstance(e, Welcomed) for e in events):
            await ws.close(CloseCode.PROTOCOL_MISMATCH, "expected welcome")
            raise ConnectFailed(Failure("hub did not start with a welcome frame"))
        welcome = next(e.welcome for e in events if isinstance(e, Welcomed))
        if welcome.version != PROTOCOL_VERSION:
            await ws.close(CloseCode.PROTOCOL_MISMATCH, "unsupported protocol version")
            raise ConnectFailed(Failure(f"hub speaks protocol {welcome.version}", fatal=True))
        needed = welcome.limits.max_frame_bytes + ENVELOPE_ALLOWANCE
        ws.protocol.max_message_size = min(MAX_INBOUND_CEILING, max(MAX_INBOUND_FRAME, needed))
        return ws

    def _closed_failure(self, code: int, exc: ConnectionClosed) -> ConnectFailed:
        reason = exc.rcvd.reason if exc.rcvd else ""
        return ConnectFailed(handshake_closed(code, reason, can_refresh=self.get_token is not None))

    async def _serve(self, ws: ClientConnection) -> float | None:
        """Run an open connection until it ends; returns the delay before reconnecting."""
        if self.state is State.CLOSED:
            await ws.close(CloseCode.NORMAL, "client closed")
            return None
        self._ws = ws
        reconnect = self._life.opened(now=self._clock())
        frames = self._session.connection_opened(now=self._clock())
        refused, self._session.refused = self._session.refused, []
        for item in refused:
            self._fail(item, MessageTooBig(f"message {item.id} is larger than the hub takes"))
        heartbeat = self._supervised(self._heartbeat(ws), ws, "heartbeat")
        refresher = self._supervised(self._refresh_token(ws), ws, "token refresh")
        try:
            await self._write(frames, ws=ws)
            await self._pump(ws)  # schedules what the hub's rate makes wait
            if reconnect:
                await self._inbox.put(_RECONNECTED)
            while True:
                raw = await ws.recv(decode=False)
                events, replies = self._session.receive(raw, now=self._clock())
                if replies:
                    await self._write(replies, ws=ws)
                if self._session.repace:  # a refusal: what it held back goes later
                    self._session.repace = False
                    await self._pump(ws)
                for event in events:
                    if isinstance(event, SubscriptionConfirmed):
                        self._settle_subscribe(event.topic, None)
                    if isinstance(event, Delivery | Resync | SubscriptionConfirmed):
                        await self._inbox.put(event)  # waits when full: backpressure
                    else:
                        self._handle_now(event)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("internal error reading the connection; reconnecting")
            self._internal_error("reader")
            ws.transport.abort()
        finally:
            heartbeat.cancel()
            refresher.cancel()
            self._ws = None
            self._session.connection_lost()
            for topic in list(self._confirming):
                self._settle_subscribe(topic, None)
        return self._after_close(ws)

    def _after_close(self, ws: ClientConnection) -> float | None:
        rcvd = ws.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else CloseCode.ABNORMAL
        reason = rcvd.reason if rcvd is not None else "connection lost"
        logger.info("connection closed: %s %s", code, reason)
        return self._life.closed(code, reason, now=self._clock())

    async def _refresh_token(self, ws: ClientConnection) -> None:
        """Send a fresh token before the current one expires (no reconnect needed)."""
        failed = False
        while self.get_token is not None and self._token:
            expires = token_expiry(self._token)
            if expires is None:
                return
            await asyncio.sleep(refresh_delay(expires, time.time(), failed=failed))
            try:
                token = await self._fresh_token()
            except Exception:
                logger.exception("get_token failed; retrying in a moment")
                failed = True
                continue
            failed = False
            if token:
                await self._write([encode(Auth(token=token))], ws=ws)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            now = self._clock()
            stable_check = self._life.stable(now=now)
            poll = self._session.poll(now=now)
            if poll.dead:
                self._life.heartbeat_failed()
                logger.warning("heartbeat deadline passed: connection presumed dead")
                ws.transport.abort()
                return
            if poll.frames:
                await self._write(poll.frames, ws=ws)
            wake = poll.wake_at if stable_check is None else min(poll.wake_at, stable_check)
            await asyncio.sleep(max(0.0, wake - self._clock()))

    async def _write(self, frames: list[bytes], *, ws: ClientConnection | None = None) -> None:
        """Write these frames now (unpaced: pongs, pings, token refreshes, reports)."""
        conn = ws if ws is not None else self._ws
        if conn is None or not frames:
            return
        async with self._write_lock:
            await self._send_all(conn, frames)

    async def _pump(self, ws: ClientConnection | None = None) -> None:
        """Write what the session's pacing allows now; set a timer for the rest."""
        conn = ws if ws is not None else self._ws
        if conn is None:
            return
        async with self._write_lock:
            frames, wake = self._session.due(now=self._clock())
            await self._send_all(conn, frames)
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None
        if wake is not None:
            delay = max(0.0, wake - self._clock())
            self._pump_timer = asyncio.get_running_loop().call_later(delay, self._pump_soon)

    def _pump_soon(self) -> None:
        self._pump_timer = None
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.ensure_future(self._pump())
            self._pump_task.add_done_callback(self._pump_done)

    def _pump_done(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("paced write failed", exc_info=task.exception())
            self._internal_error("paced writer")
            if self._ws is not None:
                self._ws.transport.abort()

    @staticmethod
    async def _send_all(conn: ClientConnection, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await conn.send(frame, text=True)
        except ConnectionClosed:
            pass  # the reader notices; unacked outbox items are re-sent on reconnect

    async def _dispatch_loop(self) -> None:
        """Hand events to the app, one at a time, in the order they were read."""
        while True:
            event = await self._inbox.get()
            if isinstance(event, _Reconnected):
                if self.on_reconnect is not None:
                    await self._callback(self.on_reconnect)
                continue
            self._session.handed_to_app(event)  # the app's cursor: what it may persist
            if isinstance(event, Delivery):
                handler = self._handlers.get(event.topic)
                if handler is not None:
                    await self._callback(handler, event)
            elif isinstance(event, Resync):
                logger.warning("resync %s: missing %s", event.topic, event.missing)
                if self.on_resync is not None:
                    await self._callback(self.on_resync, event.topic, event.missing)

    def _handle_now(self, event: Event) -> None:
        """Events with no app code behind them: resolved sends, hub errors."""
        if isinstance(event, Resolved):
            future = event.item.waiter
            if isinstance(future, asyncio.Future) and not future.done():
                if event.ok:
                    future.set_result(event.result)
                else:
                    future.set_exception(NackError(event.code, event.message, id=event.item.id))
            self._schedule_expiry()
        elif isinstance(event, SubscriptionRefused):
            logger.warning("hub refused %s: %s %s", event.topic, event.code, event.message)
            self._handlers.pop(event.topic, None)
            waiting = bool(self._confirming.get(event.topic))
            self._settle_subscribe(
                event.topic, SubscribeRefused(event.topic, event.code, event.message)
            )
            if not waiting:  # nobody awaits it (made at connect, or revoked): tell the app
                self._report_error(event.code, f"{event.topic}: {event.message}")
        elif isinstance(event, ServerError):
            logger.warning("hub error %s: %s (ref=%s)", event.code, event.message, event.ref)
            self._report_error(event.code, event.message)

    def _settle_subscribe(self, topic: str, error: SubscribeRefused | None) -> None:
        for answer in self._confirming.pop(topic, ()):
            if answer.done():
                continue
            if error is None:
                answer.set_result(None)
            else:
                answer.set_exception(error)

    # --- supervision --------------------------------------------------------------------

    def _report_error(self, code: str, message: str) -> None:
        """Call ``on_error`` (sync or async); its own failure is logged, never raised."""
        if self.on_error is None:
            return
        try:
            result = self.on_error(code, message)
        except Exception:
            logger.exception("on_error callback failed")
            return
        if not inspect.isawaitable(result):
            return
        if len(self._error_callbacks) >= MAX_ERROR_CALLBACKS:
            logger.warning(
                "%d on_error callbacks still running; not starting another", MAX_ERROR_CALLBACKS
            )
            if inspect.iscoroutine(result):
                result.close()
            return
        future = asyncio.ensure_future(result)
        self._error_callbacks.add(future)
        future.add_done_callback(self._error_callback_done)

    def _error_callback_done(self, future: asyncio.Future[None]) -> None:
        self._error_callbacks.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("on_error callback failed", exc_info=future.exception())

    def _internal_error(self, where: str) -> None:
        """A bug in the client (already logged with its traceback): tell the app."""
        self._client_error = f"internal error in the {where} (see the log)"
        self._report_error(CLIENT_ERROR, self._client_error)

    def _supervised(
        self, coro: Awaitable[None], ws: ClientConnection, name: str
    ) -> asyncio.Task[None]:
        """A connection's helper task: if it crashes, the connection is failed (and resumed)."""
        task = asyncio.ensure_future(coro)

        def ended(task: asyncio.Task[None]) -> None:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                logger.error("the %s task crashed; failing the connection", name, exc_info=exc)
                self._internal_error(name)
                ws.transport.abort()

        task.add_done_callback(ended)
        return task

    def _start_dispatcher(self) -> None:
        task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name="tether-dispatch")
        task.add_done_callback(self._dispatcher_ended)
        self._dispatcher = task

    def _dispatcher_ended(self, task: asyncio.Task[None]) -> None:
        """The dispatcher never ends on its own: if it crashed, log, report and restart it."""
        if task.cancelled() or self.state is State.CLOSED or task is not self._dispatcher:
            return
        logger.error("the dispatcher crashed; restarting it", exc_info=task.exception())
        self._internal_error("dispatcher")
        self._start_dispatcher()

    async def _callback(self, fn: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        try:
            await _maybe_await(fn(*args))
        except Exception:
            # An application callback's bug must not kill the connection or lose the cursor.
            logger.exception("callback %r failed", fn)


def _log_unretrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("unacknowledged send failed: %s", future.exception())


__all__ = ["Client", "ClientMetrics", "ConnectFailed", "parse_close_hint"]
