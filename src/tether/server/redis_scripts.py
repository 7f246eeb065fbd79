"""Tether's Redis data: key layout, the Lua scripts, and typed calls of them.

Shared by :class:`~tether.server.redis_broker.RedisBroker` (the hub nodes) and
:class:`~tether.publisher.Publisher` (any other process), so both write exactly
the same keys and frames. See redis_broker.py for the theory of operation.

Key layout (``P`` is the prefix; ``{topic}`` is a Redis Cluster hash tag, so a
topic's keys share a slot and one script may touch them all)::

    P:{topic}:meta          HASH    epoch, head
    P:{topic}:log           STREAM  ids <offset>-0, fields f (message frame), t (ms)
    P:live:topic            pub/sub channel: every published frame
    P:dedup:key             STRING  b"" while a node handles it, then its reply
    P:dedup-charge:charge   ZSET    the charge's keys, scored by claim time (s)

The dedup keys carry no hash tag: the claim script evicts keys of a charge it
computes from the charge's set, which Redis Cluster would refuse across slots.
Dedup therefore needs a standalone (or Sentinel) Redis; topics don't.

Only commands of Redis <= 7.0 are used (XTRIM MINID and exclusive XRANGE bounds
are 6.2).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..history import Replay, resume_plan, rewound_by
from ..protocol import Cursor
from .broker import BrokerUnavailable

logger = logging.getLogger("tether.redis")

#: How long a claimed message id stays "in progress" when its node never settles it
#: (it died mid-handler): retries of it are answered ``in_progress`` that long, then
#: one runs it afresh. Long enough for any sane handler, short enough that a crashed
#: node does not block a client's retry for longer than a page reload would take.
CLAIM_TTL: Final = 60.0
#: Connections of one node to Redis for commands. Commands take well under a
#: millisecond, so 64 carry tens of thousands per second; beyond, a command waits
#: for a free one (at most ``timeout``) instead of opening sockets without bound.
MAX_CONNECTIONS: Final = 64
#: Offsets sent to Lua are clamped to this: its numbers are doubles, exact up to
#: 2**53, and no topic gets anywhere near that many messages.
MAX_OFFSET: Final = 2**53
#: Expired entries a publish trims at most: bounded work per call. Each publish adds
#: one entry, so trimming keeps up with any publish rate; an idle log expires whole.
TRIM_PER_PUBLISH: Final = 64
#: Slack added to the log's own Redis TTL over ``history_ttl``: entry ages are judged
#: exactly (replay drops entries older than ``now - history_ttl``), so the key's TTL
#: only frees an idle topic's memory, and must never be the one that cuts history
#: short when node clocks differ a little.
LOG_TTL_SLACK: Final = 5.0

#: Errors that mean "Redis can't be reached": the command connection is down.
#: (Builtin TimeoutError is what ``asyncio.timeout`` raises; it is an OSError.)
CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError)


class EpochChange(enum.IntEnum):
    """What a publish or replay script did to the topic's epoch."""

    #: The topic's epoch was there and was kept.
    KEPT = 0
    #: There was no topic in Redis: a new epoch was created (first use, expired, flushed).
    CREATED = 1
    #: There was no epoch but a stale log of a previous one: it was deleted, a new
    #: epoch created (the meta hash was evicted or expired before the log).
    REPLACED = 2
    #: The floor showed Redis's head below what this node saw: a new epoch started.
    ROLLED_BACK = 3

    def unexpected(self, *, known: bool) -> bool:
        """True when an epoch existed or was expected (``known``: the caller had one)."""
        return self is not EpochChange.KEPT and (self is not EpochChange.CREATED or known)


def meta_key(prefix: str, topic: str) -> str:
    return f"{prefix}:{{{topic}}}:meta"


def log_key(prefix: str, topic: str) -> str:
    return f"{prefix}:{{{topic}}}:log"


def live_channel(prefix: str, topic: str) -> str:
    return f"{prefix}:live:{topic}"


def dedup_key(prefix: str, key: str) -> str:
    return f"{prefix}:dedup:{key}"


def charge_key(prefix: str, charge: str) -> str:
    return f"{prefix}:dedup-charge:{charge}"


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable Redis URL>"


def check_prefix(prefix: str) -> str:
    if not prefix or "{" in prefix or "}" in prefix:
        # A brace in the prefix would become the keys' hash tag instead of the topic.
        raise ValueError(f"redis prefix must be non-empty and brace-free, not {prefix!r}")
    return prefix


def check_topic_options(
    who: str, url: str, *, history_size: int, history_ttl: float, topic_ttl: float, timeout: float
) -> None:
    """The options every writer of a topic (hub node or Publisher) must get right."""
    if not url:
        raise ValueError(f"{who} needs a redis:// (or rediss://, unix://) URL")
    if history_size < 0 or history_ttl < 0:
        raise ValueError("history bounds must be >= 0")
    if topic_ttl <= 0 or timeout <= 0:
        raise ValueError("topic_ttl and timeout must be > 0")


def connection_options(*, timeout: float, name: str) -> dict[str, Any]:
    """redis-py options for every Tether connection."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No retries inside redis-py: a publish is not idempotent (a retried EVALSHA
        # whose first reply was lost would publish twice), and the broker's own
        # reconnect logic must see every failure to report it.
        "retry": Retry(NoBackoff(), 0),
        # RESP2: pub/sub messages are plain arrays and no maintenance notifications
        # (a RESP3-only feature) are negotiated.
        "protocol": 2,
        "health_check_interval": 0,  # the broker probes the feed itself
        "client_name": name,
    }


def command_client(url: str, *, timeout: float, name: str) -> Redis:
    """A client for commands: a bounded pool, waiting at most ``timeout`` for a connection."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        **connection_options(timeout=timeout, name=name),
    )
    return Redis.from_pool(pool)


def feed_connection_factory(url: str, *, timeout: float, name: str) -> ConnectionPool:
    """A pool used only to make the pub/sub connection (``make_connection``)."""
    return ConnectionPool.from_url(url, **connection_options(timeout=timeout, name=name))


def describe(exc: BaseException) -> str:
    """A failure in words (a bare ``TimeoutError`` has none of its own)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return f"no answer in time ({detail})"
    return detail


def unavailable(url: str, what: str, exc: BaseException) -> BrokerUnavailable:
    """The error an operation that Redis did not answer raises."""
    detail = describe(exc)
    return BrokerUnavailable(f"{what} failed: Redis at {redact_url(url)} is unavailable: {detail}")


# --- Lua --------------------------------------------------------------------------------------

# Shared prologue: looking a field up in a stream entry, and the topic's epoch and head,
# created when missing. Lua numbers are doubles: offsets are formatted with %d, never
# concatenated as numbers (which would print 1e+14 and the like).
_PROLOGUE = """
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function load_meta(meta, log, new_epoch)
  local got = redis.call('HMGET', meta, 'epoch', 'head')
  local epoch, head = got[1], tonumber(got[2])
  if epoch and head and string.find(epoch, '^%w+$') then
    return epoch, head, 0
  end
  -- No usable meta: first use, expired, flushed, or written by something else. A log
  -- without it belongs to a previous epoch and is dropped, so no entry of it is ever
  -- served under the new one.
  local stale = redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', new_epoch, 'head', 0)
  if stale > 0 or got[1] or got[2] then return new_epoch, 0, 2 end
  return new_epoch, 0, 1
end
"""

#: KEYS: meta, log. ARGV: 1 new epoch, 2 floor epoch ('' for none), 3 floor offset,
#: 4 topic as a JSON string, 5 payload JSON, 6 ts (ms), 7 history size, 8 age limit (ms:
#: entries with t below it are expired), 9 log TTL (ms), 10 topic TTL (ms), 11 channel,
#: 12 most expired entries to trim. Returns {epoch, offset, EpochChange}.
PUBLISH_LUA: Final = (
    _PROLOGUE
    + """
local meta, log = KEYS[1], KEYS[2]
local epoch, head, change = load_meta(meta, log, ARGV[1])
if change == 0 and ARGV[2] == epoch and head < tonumber(ARGV[3]) then
  -- The publisher saw this epoch further than Redis has it: Redis lost writes (a
  -- failover to a lagging replica, a restored backup). Reusing those offsets would give
  -- two messages one position, so the topic starts over in a new epoch.
  epoch, head, change = ARGV[1], 0, 3
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
end
head = redis.call('HINCRBY', meta, 'head', 1)
local offset = string.format('%d', head)
-- Byte for byte what tether.protocol.encode(Message(...)) writes: the topic arrives
-- JSON-encoded and the payload pre-checked, so nothing is escaped here.
local frame = '{"type":"message","topic":' .. ARGV[4] .. ',"epoch":"' .. epoch
  .. '","offset":' .. offset .. ',"ts":' .. ARGV[6] .. ',"data":' .. ARGV[5] .. '}'
local size = tonumber(ARGV[7])
if size > 0 then
  redis.call('XADD', log, 'MAXLEN', size, offset .. '-0', 'f', frame, 't', ARGV[6])
  -- Trim expired entries from the oldest on, one at a time (an entry may be large, so
  -- never read more than the ones being dropped), at most a bounded number per call.
  local limit = tonumber(ARGV[8])
  local from, threshold = '-', nil
  for _ = 1, tonumber(ARGV[12]) do
    local e = redis.call('XRANGE', log, from, '+', 'COUNT', 1)[1]
    if not e or (tonumber(field(e[2], 't')) or 0) >= limit then break end
    threshold = string.format('%d', tonumber(string.match(e[1], '^%d+')) + 1) .. '-0'
    from = '(' .. e[1]
  end
  if threshold then redis.call('XTRIM', log, 'MINID', threshold) end
  redis.call('PEXPIRE', log, ARGV[9])
end
redis.call('PEXPIRE', meta, ARGV[10])
redis.call('PUBLISH', ARGV[11], frame)
return {epoch, head, change}
"""
)

#: KEYS: meta, log. ARGV: 1 new epoch, 2 resume epoch ('' for none), 3 first offset
#: wanted, 4 history size, 5 topic TTL (ms), 6 rewind (entries wanted without a resume).
#: Returns {epoch, head, EpochChange, rows} where rows is {offset, t, frame, ...} in
#: offset order: the entries from the first offset wanted (all, for another epoch; the
#: newest ``rewind``, without a resume), at most history size, newest kept.
REPLAY_LUA: Final = (
    _PROLOGUE
    + """
local meta, log = KEYS[1], KEYS[2]
local epoch, head, change = load_meta(meta, log, ARGV[1])
redis.call('PEXPIRE', meta, ARGV[5])
local size = tonumber(ARGV[4])
local rewind = math.min(tonumber(ARGV[6]), size)
local rows = {}
if (ARGV[2] ~= '' or rewind > 0) and size > 0 then
  local entries = {}
  if ARGV[2] == '' then
    entries = redis.call('XREVRANGE', log, '+', '-', 'COUNT', rewind)
  elseif ARGV[2] == epoch then
    if tonumber(ARGV[3]) <= head then
      entries = redis.call('XREVRANGE', log, '+', ARGV[3] .. '-0', 'COUNT', size)
    end
  else
    entries = redis.call('XREVRANGE', log, '+', '-', 'COUNT', size)
  end
  for i = #entries, 1, -1 do
    local e = entries[i]
    rows[#rows + 1] = string.match(e[1], '^%d+') or '0'
    rows[#rows + 1] = field(e[2], 't') or ''
    rows[#rows + 1] = field(e[2], 'f') or ''
  end
end
return {epoch, head, change, rows}
"""
)

#: KEYS: dedup key, charge set. ARGV: 1 the key as the set's member, 2 now (s), 3 the
#: charge's window, 4 dedup TTL (ms), 5 claim TTL (ms), 6 dedup key prefix, 7 expiry
#: limit (s: members scored below it are forgotten). Returns the stored value (b"" while
#: in progress) or nil when the key is new and now claimed.
CLAIM_LUA: Final = """
local value = redis.call('GET', KEYS[1])
if value then return value end
redis.call('SET', KEYS[1], '', 'PX', ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
-- Each charge keeps at most its window and evicts only its own oldest, so no client
-- can flush another's records by sending junk ids (the rule of tether.dedup).
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #popped, 2 do redis.call('DEL', ARGV[6] .. popped[i]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return false
"""


def _ms(seconds: float) -> int:
    """A duration in whole milliseconds for PEXPIRE/PX (at least 1: 0 deletes at once)."""
    return max(1, round(seconds * 1000))


class Topics:
    """The scripts bound to one client and prefix, with typed arguments and results."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = check_prefix(prefix)
        self._publish = client.register_script(PUBLISH_LUA)
        self._replay = client.register_script(REPLAY_LUA)
        self._claim = client.register_script(CLAIM_LUA)

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        now: float,
        new_epoch: str,
        floor: Cursor | None,
        history_size: int,
        history_ttl: float,
        topic_ttl: float,
    ) -> tuple[str, int, EpochChange]:
        """Run the publish script: ``(epoch, offset, what happened to the epoch)``."""
        p = self.prefix
        ts = int(now * 1000)  # as TopicLog writes it into the frame
        result = await self._publish(
            keys=[meta_key(p, topic), log_key(p, topic)],
            args=[
                new_epoch,
                "" if floor is None else floor.epoch,
                0 if floor is None else min(floor.offset, MAX_OFFSET),
                msgspec.json.encode(topic),
                data,
                ts,
                history_size,
                repr((now - history_ttl) * 1000),
                _ms(history_ttl + LOG_TTL_SLACK),
                _ms(topic_ttl),
                live_channel(p, topic),
                TRIM_PER_PUBLISH,
            ],
        )
        epoch, offset, change = result
        return _text(epoch), int(offset), EpochChange(int(change))

    async def replay(
        self,
        topic: str,
        resume: Cursor | None,
        *,
        now: float,
        rewind: int = 0,
        new_epoch: str,
        history_size: int,
        history_ttl: float,
        topic_ttl: float,
    ) -> tuple[Replay, EpochChange]:
        """Run the replay script and answer ``resume`` as :meth:`TopicLog.replay` would."""
        p = self.prefix
        start = 0 if resume is None else min(resume.offset, MAX_OFFSET) + 1
        result = await self._replay(
            keys=[meta_key(p, topic), log_key(p, topic)],
            args=[
                new_epoch,
                "" if resume is None else resume.epoch,
                start,
                history_size,
                _ms(topic_ttl),
                rewind,
            ],
        )
        epoch_raw, head_raw, change, flat = result
        epoch, head = _text(epoch_raw), int(head_raw)
        rows = [
            (_int(flat[i]), _int(flat[i + 1]), bytes(flat[i + 2])) for i in range(0, len(flat), 3)
        ]
        replay = replay_from_rows(
            topic, epoch, head, resume, rows, limit_ms=(now - history_ttl) * 1000, rewind=rewind
        )
        return replay, EpochChange(int(change))

    async def claim(
        self, key: str, *, charge: str, now: float, window: int, ttl: float
    ) -> bytes | None:
        p = self.prefix
        result = await self._claim(
            keys=[dedup_key(p, key), charge_key(p, charge)],
            args=[
                key,
                repr(now),
                window,
                _ms(ttl),
                _ms(CLAIM_TTL),
                dedup_key(p, ""),
                repr(now - ttl),
            ],
        )
        return None if result is None else bytes(result)

    async def settle(self, key: str, reply: bytes | None, *, ttl: float) -> None:
        if reply is None:
            await self.client.delete(dedup_key(self.prefix, key))
        elif not reply:
            raise ValueError("a settled reply must not be empty (b'' reads as in progress)")
        else:
            # XX: a claim evicted meanwhile (its charge overflowed) stays forgotten, so the
            # charge's bound holds; a retry then runs afresh, as after any eviction.
            await self.client.set(dedup_key(self.prefix, key), reply, px=_ms(ttl), xx=True)

    async def latest(self, topics: Sequence[str]) -> list[tuple[int, int, bytes] | None]:
        """The newest logged entry of each topic as ``(offset, t ms, frame)``, if any."""
        async with self.client.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.xrevrange(log_key(self.prefix, topic), "+", "-", count=1)
            results: list[Any] = await pipe.execute()
        latest: list[tuple[int, int, bytes] | None] = []
        for entries in results:
            if not entries:
                latest.append(None)
                continue
            entry_id, fields = entries[0]
            try:
                offset = int(bytes(entry_id).split(b"-")[0])
                latest.append((offset, int(fields[b"t"]), bytes(fields[b"f"])))
            except (KeyError, ValueError):
                latest.append(None)  # not an entry Tether wrote: nothing to catch up from
        return latest


def replay_from_rows(
    topic: str,
    epoch: str,
    head: int,
    resume: Cursor | None,
    rows: Sequence[tuple[int, int, bytes]],
    *,
    limit_ms: float,
    rewind: int = 0,
) -> Replay:
    """The :class:`Replay` of ``rows`` (``(offset, t ms, frame)``, ascending, the log's
    newest entries from the first offset ``resume`` needs): expired ones dropped from
    the oldest on, as :meth:`TopicLog.prune` does, then :func:`resume_plan`."""
    first = 0
    while first < len(rows) and rows[first][1] < limit_ms:
        first += 1
    kept = rows[first:]
    if kept and not _contiguous(kept, head):
        # Only Tether's scripts write the log, atomically with the head; anything else
        # is foreign meddling. Sending frames whose offsets can't be vouched for would
        # break the +1 rule, so the history is reported lost instead.
        logger.warning(
            "redis log of topic %r does not run +1 up to head %d: treated as lost", topic, head
        )
        kept = []
    oldest = kept[0][0] if kept else head + 1
    missing, start = resume_plan(resume, epoch=epoch, head=head, oldest=oldest, rewind=rewind)
    frames = [frame for _, _, frame in kept[max(0, start - oldest) :]] if start <= head else []
    return Replay(epoch, head, not missing, missing, frames, rewound_by(resume, frames))


def _contiguous(rows: Sequence[tuple[int, int, bytes]], head: int) -> bool:
    base = rows[0][0]
    return rows[-1][0] == head and all(row[0] == base + i and row[2] for i, row in enumerate(rows))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1  # an unparseable row: _contiguous rejects it
