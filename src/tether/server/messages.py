"""Client->hub ``send`` and ``publish``: run each message once, answer every retry.

A message id is remembered in a bounded dedup window (:mod:`tether.dedup`) keyed
by the sender (docs/protocol.md, "Client -> hub messages"): a retry is answered
with the first run's outcome, waiting for it while it still runs, and the handler
never runs twice. With a shared broker (Redis) a retry may land on another node:
an id this node has not seen is *claimed* in Redis first, so the node that ran it
answers with the recorded reply, and one still running elsewhere is nacked
``in_progress`` (retryable). Ordering and queueing per connection are the hub's
(``Hub._apply``); this module decides what one message's answer is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..auth import Action, Identity
from ..config import HubConfig
from ..dedup import DedupWindow
from ..errors import ErrorCode, Reject
from ..history import Entry
from ..payload import InvalidPayload
from ..protocol import Ack, Nack, Publish, Send, encode, encode_data
from .broker import IN_PROGRESS, Broker, BrokerUnavailable, TooManyTopics
from .links import Link
from .stats import HubStats

logger = logging.getLogger("tether.hub")

#: The id form of the official clients: a random 64-bit client instance, then a counter.
_CLIENT_INSTANCE = re.compile(r"^([0-9a-f]{16})-[0-9]+$")
#: When a client may retry a message nacked ``overloaded``, ``unavailable`` or
#: ``in_progress``: a handler's typical run, so what held it up has moved on.
RETRY_LATER_MS = 1000


@dataclass(frozen=True, slots=True)
class Incoming:
    """A client message as a hub handler sees it."""

    event: str
    data: Any
    id: str
    session: str
    identity: Identity


Handler = Callable[[Incoming], Awaitable[Any]]


class ClientMessages:
    """Runs each client message once and answers it (``ack``/``nack`` frames)."""

    def __init__(
        self,
        *,
        config: HubConfig,
        broker: Broker,
        stats: HubStats,
        authenticated: bool,
        allowed: Callable[[Identity, Action, str], bool],
        check_raw: Callable[[msgspec.Raw], None],
        publish: Callable[[str, msgspec.Raw], Awaitable[Entry]],
        publish_now: Callable[[str, msgspec.Raw], Entry] | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``publish_now`` is set when the broker answers at once (in memory): client
        publishes then run inline. ``clock`` (monotonic) ages dedup records; ``wall``
        dates the shared ones."""
        self.broker = broker
        self.stats = stats
        self.handlers: dict[str, Handler] = {}
        self._authenticated = authenticated
        self._allowed = allowed
        self._check_raw = check_raw
        self._publish = publish
        self._publish_now = publish_now
        self._clock = clock
        self._wall = wall
        self._dedup: DedupWindow[tuple[str, str], asyncio.Future[bytes]] = DedupWindow(
            per_charge=config.dedup_window,
            max_entries=config.dedup_max_entries,
            ttl=config.dedup_ttl,
        )

    def __repr__(self) -> str:
        return f"<ClientMessages handlers={len(self.handlers)} remembered={len(self._dedup)}>"

    def publish_once_now(self, link: Link, frame: Publish) -> bytes | None:
        """A publish through the dedup window, synchronously; ``None`` if a run of the
        same id is still in progress (the caller queues it to wait for that)."""
        earlier, outcome = self._remember(link, frame.id)
        if earlier is not None:
            if not earlier.done():
                return None
            self.stats.sends_deduplicated += 1
            return earlier.result()
        reply = self._execute_publish(link, frame)
        outcome.set_result(reply)
        self.stats.sends_handled += 1
        return reply

    def dedup_key(self, link: Link, msg_id: str) -> tuple[tuple[str, str], str]:
        """Where a message id is remembered, and whose budget it is charged to.

        With authentication both are the token's subject. Anonymous clients have no
        identity: their ids are charged to their address, and scoped by the client
        instance an official id names (``<16 random hex>-<n>``: unguessable, and it
        survives reconnects from another address), else by the address too.
        """
        if self._authenticated:
            scope = "sub:" + link.identity.subject
            return (scope, msg_id), scope
        charge = "addr:" + link.address
        instance = _CLIENT_INSTANCE.match(msg_id)
        return ("client:" + instance[1] if instance else charge, msg_id), charge

    def _remember(
        self, link: Link, msg_id: str
    ) -> tuple[asyncio.Future[bytes] | None, asyncio.Future[bytes]]:
        """``(earlier, outcome)``: the earlier run's outcome for this id, if one is
        remembered (then ``outcome`` is that same future); else a new future, remembered
        now, that the caller must resolve with this run's reply. A cancelled run (a
        handler cut short by shutdown) does not count: a retry runs it afresh."""
        key, charge = self.dedup_key(link, msg_id)
        now = self._clock()
        earlier = self._dedup.get(key, now=now)
        if earlier is not None and not earlier.cancelled():
            return earlier, earlier
        outcome: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._dedup.put(key, outcome, charge=charge, now=now)
        return None, outcome

    async def handle_once(self, link: Link, frame: Send | Publish) -> bytes:
        earlier, outcome = self._remember(link, frame.id)
        if earlier is not None:
            self.stats.sends_deduplicated += 1
            return await asyncio.shield(earlier)
        shared_key = None
        if self.broker.shared:
            # Another node may have run it (the client reconnected elsewhere): ask Redis.
            (scope, msg_id), charge = self.dedup_key(link, frame.id)
            shared_key = f"{scope}\n{msg_id}"
            try:
                recorded = await self.broker.claim(shared_key, charge=charge, now=self._wall())
            except BrokerUnavailable as exc:
                outcome.cancel()  # not run: a retry must get its chance
                return self._nack_later(frame.id, ErrorCode.UNAVAILABLE, exc.message)
            if recorded == IN_PROGRESS:
                outcome.cancel()
                return self._nack_later(
                    frame.id, ErrorCode.IN_PROGRESS, "another hub node is handling this message"
                )
            if recorded is not None:
                outcome.set_result(recorded)
                self.stats.sends_deduplicated += 1
                return recorded
        try:
            reply = await self._execute(link, frame)
        except BaseException:
            # Cancelled mid-handler (hub shutting down): let a retry run it afresh.
            outcome.cancel()
            if shared_key is not None:
                await self._settle(shared_key, None)
            raise
        outcome.set_result(reply)
        self.stats.sends_handled += 1
        if shared_key is not None:
            await self._settle(shared_key, reply)
        return reply

    async def _settle(self, key: str, reply: bytes | None) -> None:
        try:
            await self.broker.settle(key, reply)
        except BrokerUnavailable as exc:
            # This node still remembers it; a retry landing on another node before Redis
            # is back waits out the claim (it stays "in progress"), then runs again.
            logger.warning("could not record the outcome of a client message: %s", exc)

    @staticmethod
    def _nack_later(msg_id: str, code: ErrorCode, message: str) -> bytes:
        return encode(Nack(id=msg_id, code=code, message=message, retry_after_ms=RETRY_LATER_MS))

    def _may_publish(self, link: Link, frame: Publish) -> bytes | None:
        """The nack for a publish this connection may not make, else ``None``."""
        if self._allowed(link.identity, Action.PUBLISH, frame.topic):
            return None
        self.stats.forbidden += 1
        return encode(Nack(id=frame.id, code=ErrorCode.FORBIDDEN, message="not allowed to publish"))

    def _execute_publish(self, link: Link, frame: Publish) -> bytes:
        """A client's publish with the in-memory broker (synchronous)."""
        assert self._publish_now is not None
        refusal = self._may_publish(link, frame)
        if refusal is not None:
            return refusal
        try:
            self._check_raw(frame.data)
            entry = self._publish_now(frame.topic, frame.data)
        except (InvalidPayload, TooManyTopics) as exc:
            return encode(Nack(id=frame.id, code=exc.code, message=exc.message))
        return encode(Ack(id=frame.id, result={"offset": entry.offset, "epoch": entry.epoch}))

    async def _execute_publish_shared(self, link: Link, frame: Publish) -> bytes:
        refusal = self._may_publish(link, frame)
        if refusal is not None:
            return refusal
        try:
            entry = await self._publish(frame.topic, frame.data)
        except (InvalidPayload, TooManyTopics) as exc:
            return encode(Nack(id=frame.id, code=exc.code, message=exc.message))
        except BrokerUnavailable as exc:
            return self._nack_later(frame.id, ErrorCode.UNAVAILABLE, exc.message)
        return encode(Ack(id=frame.id, result={"offset": entry.offset, "epoch": entry.epoch}))

    async def _execute(self, link: Link, frame: Send | Publish) -> bytes:
        if isinstance(frame, Publish):
            if self._publish_now is not None:
                return self._execute_publish(link, frame)
            return await self._execute_publish_shared(link, frame)
        handler = self.handlers.get(frame.event)
        if handler is None:
            return encode(
                Nack(
                    id=frame.id,
                    code=ErrorCode.NO_HANDLER,
                    message=f"no handler for event {frame.event!r}",
                )
            )
        incoming = Incoming(
            event=frame.event,
            data=frame.data,
            id=frame.id,
            session=link.session.id,
            identity=link.identity,
        )
        started = self._clock()
        try:
            result = await handler(incoming)
            return encode(Ack(id=frame.id, result=encode_data(result)))
        except Reject as exc:
            return encode(Nack(id=frame.id, code=exc.code, message=exc.message))
        except Exception:
            logger.exception("handler for %r failed (message %s)", frame.event, frame.id)
            return encode(
                Nack(id=frame.id, code=ErrorCode.HANDLER_ERROR, message="the handler failed")
            )
        finally:
            self.stats.handler_seconds.observe(self._clock() - started)
