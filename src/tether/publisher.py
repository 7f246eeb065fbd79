"""Publish into a scaled-out Tether from any process: straight into the hubs' Redis.

A backend worker, a cron job or another service can publish without a hub
connection or an HTTP round trip::

    async with Publisher("redis://redis:6379/0") as publisher:
        offset = await publisher.publish("orders/42", {"status": "shipped"})

It runs the very script the hubs run (tether.server.redis_scripts): the same
offsets, epochs, history bounds and frames, announced on the same channels, so
every hub node delivers the message to its subscribers at once. It checks topics
and payloads by the hubs' rules before anything is sent. Give it the hubs'
``prefix``, ``history_size``, ``history_ttl`` and ``redis_topic_ttl`` if they are
not the defaults (the hub's own defaults are these arguments' defaults).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from redis.exceptions import RedisError

from .config import HubConfig
from .payload import check_payload, encode_payload
from .protocol import Cursor, validate_topic
from .server.broker import new_epoch
from .server.redis_scripts import (
    CONNECTION_ERRORS,
    Topics,
    check_topic_options,
    command_client,
    redact_url,
    unavailable,
)

_DEFAULTS: Final = HubConfig()

#: Topics whose last published position is remembered as the next publish's floor
#: (least recently published forgotten first). The floor lets the script notice that
#: Redis lost writes and start a new epoch rather than reuse offsets; a topic beyond
#: this many is published without one, as a fresh publisher would.
FLOOR_TOPICS: Final = 1024


class Publisher:
    """Publishes to Tether topics through Redis, by the hubs' rules (see the module)."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = _DEFAULTS.redis_prefix,
        history_size: int = _DEFAULTS.history_size,
        history_ttl: float = _DEFAULTS.history_ttl,
        topic_ttl: float = _DEFAULTS.redis_topic_ttl,
        timeout: float = _DEFAULTS.redis_timeout,
        max_frame_bytes: int = _DEFAULTS.max_frame_bytes,
        max_payload_depth: int = _DEFAULTS.max_payload_depth,
    ) -> None:
        check_topic_options(
            "Publisher",
            redis_url,
            history_size=history_size,
            history_ttl=history_ttl,
            topic_ttl=topic_ttl,
            timeout=timeout,
        )
        self.redis_url = redis_url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.topic_ttl = topic_ttl
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self.max_payload_depth = max_payload_depth
        self._client = command_client(redis_url, timeout=timeout, name="tether-publisher")
        self._topics = Topics(self._client, prefix)
        self.prefix = self._topics.prefix
        self._floors: OrderedDict[str, Cursor] = OrderedDict()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Publisher {redact_url(self.redis_url)} prefix={self.prefix!r}>"

    async def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` (any JSON value, or a pre-encoded ``msgspec.Raw``) to
        ``topic``; returns its offset.

        Raises ``ValueError`` for a bad topic, :class:`~tether.payload.InvalidPayload`
        (a ``ValueError``) for a payload not every client could decode, ``TypeError``
        for a value JSON can't hold (nothing is sent for any of these), and
        :class:`~tether.server.broker.BrokerUnavailable` when Redis does not answer
        (after a timeout the message may or may not have been published).
        """
        if self._closed:
            raise RuntimeError("this Publisher was closed")
        validate_topic(topic)
        raw = self._encode(data)
        floor = self._floors.get(topic)
        try:
            async with asyncio.timeout(self.timeout):
                epoch, offset, _ = await self._topics.publish(
                    topic,
                    raw,
                    now=time.time(),
                    new_epoch=new_epoch(),
                    floor=floor,
                    history_size=self.history_size,
                    history_ttl=self.history_ttl,
                    topic_ttl=self.topic_ttl,
                )
        except (*CONNECTION_ERRORS, RedisError) as exc:
            raise unavailable(self.redis_url, f"publish to {topic!r}", exc) from None
        self._remember(topic, epoch, offset)
        return offset

    def _encode(self, data: Any) -> bytes:
        if isinstance(data, msgspec.Raw):
            # Pre-encoded bytes are not known to be valid JSON: check all of the rule.
            raw = bytes(data)
            check_payload(raw, max_depth=self.max_payload_depth, max_bytes=self.max_frame_bytes)
            return raw
        return bytes(
            encode_payload(data, max_depth=self.max_payload_depth, max_bytes=self.max_frame_bytes)
        )

    def _remember(self, topic: str, epoch: str, offset: int) -> None:
        known = self._floors.get(topic)
        # Concurrent publishes complete in any order: keep the furthest of the epoch.
        if known is None or known.epoch != epoch or known.offset < offset:
            self._floors[topic] = Cursor(epoch=epoch, offset=offset)
        self._floors.move_to_end(topic)
        while len(self._floors) > FLOOR_TOPICS:
            self._floors.popitem(last=False)

    async def aclose(self) -> None:
        """Close the connections (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
