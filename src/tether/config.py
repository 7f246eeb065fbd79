"""Every tunable of the hub and the clients, with its default and the reason for it.

This module is the single place defaults live. Each field can be set three ways,
all derived from the field itself so they cannot drift apart:

* keyword argument: ``HubConfig(history_size=5000)``, ``Client(url, max_attempts=20)``;
* environment variable: ``TETHER_HISTORY_SIZE=5000`` (see :func:`from_env`);
* CLI flag: ``tether serve --history-size 5000`` (see :func:`add_arguments`).

``docs/configuration.md`` is generated from these fields (``tether config-doc``)
and a test checks the two agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from .backoff import Jitter, check_jitter

ENV_PREFIX = "TETHER_"


class OutboxPolicy(enum.StrEnum):
    """What the client outbox does when it is full."""

    #: Refuse the new message (``OutboxFull``); nothing already queued is lost.
    REJECT_NEW = "reject-new"
    #: Evict the oldest queued message (its ``send`` fails with ``MessageDropped``).
    DROP_OLDEST = "drop-oldest"
    #: Replace a queued message with the same ``key``; without a match, reject the new one.
    COALESCE = "coalesce-by-key"


def _field(default: Any, reason: str, *, unit: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"reason": reason, "unit": unit})


#: The largest ``fanout_yield_max``: beyond a second a "live" dashboard is not live.
MAX_FANOUT_YIELD: Final = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HubConfig:
    """Settings of a hub (server). All durations are in seconds."""

    host: str = _field(
        "127.0.0.1", "Loopback only until you decide to expose it (put TLS in front first)."
    )
    port: int = _field(8765, "Unprivileged and unlikely to clash with common dev servers.")
    heartbeat_interval: float = _field(
        25.0,
        "Socket.IO and Centrifugo both ping every 25 s: under the 30-60 s idle timeouts of "
        "common proxies and load balancers, cheap at 10k connections (400 pings/s).",
        unit="s",
    )
    heartbeat_timeout: float = _field(
        20.0,
        "Socket.IO's ping timeout. A peer silent for interval + timeout (45 s) is dead; the "
        "margin absorbs GC pauses, slow networks and a busy browser main thread.",
        unit="s",
    )
    history_size: int = _field(
        1000,
        "Messages kept per topic for resume. At ~200 B each, 200 KB per topic; covers a "
        "2-minute outage at ~8 messages/s.",
    )
    history_ttl: float = _field(
        120.0,
        "Ably's 2-minute recovery window: long enough for a Wi-Fi drop, a laptop lid or a "
        "server deploy; older data is better refetched than replayed.",
        unit="s",
    )
    max_topics: int = _field(
        100_000,
        "Caps topic bookkeeping memory. Past it, idle topics (no subscribers) are evicted "
        "least recently used first, in O(1); a later resume of an evicted topic is reported "
        "as a gap, never silent. With every topic in use, a new one is refused "
        "(too_many_topics).",
    )
    dedup_window: int = _field(
        10_000,
        "Idempotency ids remembered per identity (token subject), or per address for "
        "anonymous clients, to answer retries without re-running handlers: ten full client "
        "outboxes (1000). Each evicts only its own oldest, so no neighbour can flush it.",
    )
    dedup_max_entries: int = _field(
        200_000,
        "Ids remembered in all, ~40 MB at ~200 B each. Past it the identity or address "
        "holding the most loses its oldest first, so many small honest clients outlast a "
        "few that send junk ids.",
    )
    dedup_ttl: float = _field(
        300.0,
        "Longer than the client outbox TTL (120 s) plus the backoff cap (30 s), so any retry a "
        "client can still make is recognised.",
        unit="s",
    )
    max_frame_bytes: int = _field(
        65_536,
        "Client frames are commands, not bulk data; 64 KiB bounds per-frame parsing memory. "
        "Bigger frames are closed with 1009. Also the largest payload anyone may publish "
        "(HTTP, WebSocket or in process), so every message fits every client's frame cap.",
    )
    max_payload_depth: int = _field(
        32,
        "Nesting of a published payload (arrays and objects). Real documents stay under ten; "
        "every client decodes recursively, so the cap keeps a hostile payload from "
        "exhausting a subscriber's stack.",
    )
    max_subscriptions: int = _field(
        100, "Per connection. Dashboards use a handful; caps per-connection fan-out state."
    )
    max_send_buffer_bytes: int = _field(
        262_144,
        "A subscriber whose unsent bytes pass 256 KiB (~2,500 typical messages) is cut off "
        "with 4008 and resumes from history, instead of slowing others or eating memory. "
        "Never below two frames of max_frame_bytes: one big message is not a slow consumer.",
    )
    max_pending_sends: int = _field(
        100,
        "Client->hub messages queued per connection while handlers run; beyond, nack "
        "'overloaded'. Bounds memory while keeping per-connection order.",
    )
    restart_spread: float = _field(
        10.0,
        "On graceful restart clients are told to come back after a random 0..10 s: 10k clients "
        "arrive at ~1k/s instead of all at once.",
        unit="s",
    )
    shutdown_timeout: float = _field(
        5.0,
        "Graceful shutdown waits this long for close handshakes and handlers before exiting.",
        unit="s",
    )
    # --- security (docs/security.md) ---
    jwt_secret: str = _field(
        "",
        "HS256 shared secret; setting it (or a key below) makes every connection need a token. "
        "Prefer the environment variable: a CLI flag shows up in `ps`.",
    )
    jwt_public_key: str = _field("", "Path to a PEM public key, for RS256/ES256 tokens.")
    jwt_jwks: str = _field("", "Path to a JWKS file (keys chosen by the token's `kid`).")
    jwt_audience: str = _field("", "Required `aud` claim, if set.")
    jwt_issuer: str = _field("", "Required `iss` claim, if set.")
    jwt_leeway: float = _field(
        30.0, "Clock skew tolerated on exp/nbf/iat: enough for NTP-synced hosts.", unit="s"
    )
    allow_query_token: bool = _field(
        False, "Accept ?token=: off because URLs land in access logs and browser history."
    )
    api_keys: str = _field(
        "", "Comma-separated keys accepted by POST /publish (X-API-Key or Bearer)."
    )
    insecure_dev: bool = _field(
        False,
        "Development only: POST /publish without credentials. Off so that an exposed hub "
        "never accepts anonymous publishes by accident.",
    )
    allowed_origins: str = _field(
        "",
        "Origins allowed to open WebSockets (comma-separated, or *). Empty: on a loopback "
        "hub only loopback pages (DNS rebinding can fake Host), elsewhere the same origin: "
        "stops cross-site WebSocket hijacking. Non-browser clients send no Origin.",
    )
    client_telemetry: bool = _field(
        False,
        "Accept POST /telemetry (browser clients' lifecycle events, counted in /metrics). "
        "Off: anyone who can reach the hub could inflate those counters.",
    )
    max_connections: int = _field(
        10_000, "Total sessions; past it, handshakes get 503 + Retry-After (load shedding)."
    )
    max_connections_per_address: int = _field(
        256, "One address can't take the whole hub; 256 leaves room for an office behind NAT."
    )
    max_connections_per_identity: int = _field(
        32,
        "Sessions per token subject: several tabs on several devices fit; a leaked token "
        "cannot take every slot.",
    )
    handshake_rate: float = _field(
        20.0,
        "New connections per second per address (token bucket; WebSocket handshakes and "
        "HTTP requests alike, charged as they are accepted): a reconnecting fleet behind one "
        "NAT fits, a flood gets 429 for the price of a few system calls.",
    )
    handshake_burst: int = _field(40, "Bucket size for handshake_rate: a page of tabs at once.")
    handshake_timeout: float = _field(
        10.0,
        "A connection must send its whole HTTP request (the WebSocket handshake) within this, "
        "or it is closed: slowloris clients can't hold sockets open by dribbling headers.",
        unit="s",
    )
    listen_backlog: int = _field(
        4096,
        "Kernel accept queue (capped by net.core.somaxconn, 4096 on current Linux): a fleet "
        "reconnecting after a restart queues instead of losing SYNs, each of which costs "
        "its client a 1 s, then 3 s kernel retransmit before its own backoff even starts.",
    )
    accept_per_turn: int = _field(
        64,
        "Connections accepted per event-loop turn: a storm is drained over successive "
        "turns (~30 µs each), so delivery to connected clients never waits more than "
        "a couple of milliseconds behind accepting.",
    )
    fanout_yield_max: float = _field(
        0.02,
        "Under load (a fan-out over 2 ms), the next fan-out waits until the event loop "
        "has had half as long as the last one took, at most this: messages published "
        "meanwhile reach each subscriber in one write (fewer send() calls per delivery), "
        "and heartbeats, handshakes and client messages keep a third of the loop. Lightly "
        "loaded, nothing waits. 20 ms caps what it adds to a message (a frame at 50 fps); "
        "0: every message in its own loop turn.",
        unit="s",
    )
    trusted_proxies: str = _field(
        "",
        "Addresses or networks (comma-separated, e.g. 127.0.0.1,10.0.0.0/8) of your load "
        "balancers. A connection from one is charged to the client address its "
        "X-Forwarded-For names, so per-address limits apply per client, not to the whole "
        "balancer. Empty: the header is ignored (anyone could forge it).",
    )
    inbound_rate: float = _field(
        50.0,
        "Frames per second per connection: far above any UI, far below a flood.",
    )
    inbound_burst: int = _field(100, "Bucket size for inbound_rate: an outbox flush at reconnect.")
    internal_port: int = _field(
        0,
        "Off. A second listener with no per-address accept limit, for backends that POST "
        "/publish with a fresh connection per message (curl, requests.post) and for "
        "Prometheus: credentials are still required. Keep it off the public network, like "
        "Centrifugo's internal port.",
    )
    internal_host: str = _field(
        "127.0.0.1", "Where internal_port listens: loopback unless you choose a private network."
    )
    # --- scale-out (docs/scaling.md) ---
    redis_url: str = _field(
        "",
        "Empty: topics live in this process (one node). A redis:// URL shares history, "
        "offsets, epochs and dedup with every hub node using the same Redis.",
    )
    redis_prefix: str = _field(
        "tether", "Namespace of every Redis key and channel: several apps can share a Redis."
    )
    redis_topic_ttl: float = _field(
        86_400.0,
        "A topic idle this long forgets its epoch and head in Redis (~100 B each): a day "
        "keeps exact gap reports for an overnight laptop while bounding Redis memory.",
        unit="s",
    )
    redis_timeout: float = _field(
        2.0,
        "A Redis command (publish, resume, dedup) that takes longer fails loudly: 503 / "
        "'unavailable' instead of a hung request. Redis answers in under a millisecond.",
        unit="s",
    )
    redis_probe_interval: float = _field(
        1.0,
        "How often each node pings its pub/sub connection. A missed pong reconnects and "
        "repairs from history: a wedged feed costs at most a second or two of delay, "
        "never a lost message (Centrifugo waits 40 s).",
        unit="s",
    )

    @property
    def send_buffer_limit(self) -> int:
        """The unsent bytes past which a subscriber is cut off (``max_send_buffer_bytes``,
        raised to two of the largest frames this hub lets anyone publish)."""
        return max(self.max_send_buffer_bytes, 2 * self.max_frame_bytes)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fanout_yield_max <= MAX_FANOUT_YIELD:
            raise ValueError(
                f"fanout_yield_max must be between 0 and {MAX_FANOUT_YIELD:g} s, not "
                f"{self.fanout_yield_max!r}: it bounds latency added to messages"
            )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ClientConfig:
    """Settings of a client. All durations are in seconds."""

    backoff_base: float = _field(
        1.0,
        "Socket.IO's first delay and the seeds' common choice: a blip is retried within ~1 s.",
        unit="s",
    )
    backoff_factor: float = _field(2.0, "Doubling reaches the cap in 5 steps (1, 2, 4, 8, 16, 30).")
    backoff_cap: float = _field(
        30.0,
        "Between the seeds' 16/30/60 s. With full jitter the mean wait is 15 s: a user waits at "
        "most 30 s after the hub is back, and 10k clients retry at ~670/s.",
        unit="s",
    )
    jitter: Jitter = _field(
        Jitter.FULL,
        "Full jitter (each delay uniform on [0, ceiling]) spreads a fleet that lost its hub at "
        "once over the whole window; 'proportional' and 'absolute' keep each delay near the "
        "exponential schedule (predictable, but a fleet stays bunched). Never above the cap.",
    )
    jitter_ratio: float = _field(
        0.3,
        "For jitter=proportional: each delay is the ceiling ±30 % (a seed's choice; "
        "Socket.IO uses ±50 %).",
    )
    jitter_seconds: float = _field(
        0.5,
        "For jitter=absolute: each delay is the ceiling ±0.5 s (a seed's choice).",
        unit="s",
    )
    max_attempts: int = _field(
        10,
        "The seeds' consensus. About 90 s of retrying with the defaults before the circuit "
        "opens (FAILED).",
    )
    connect_timeout: float = _field(
        10.0,
        "An attempt that has not completed the handshake and welcome in 10 s counts as failed "
        "(websockets' open timeout).",
        unit="s",
    )
    stable_after: float = _field(
        30.0,
        "The retry counter resets only after 30 s connected, so a hub that accepts then crashes "
        "keeps backing off instead of being hammered at the base delay.",
        unit="s",
    )
    circuit_cooldown: float = _field(
        60.0,
        "While FAILED (circuit open) the client probes once a minute: cheap for a struggling "
        "hub, yet a dashboard left open recovers without a reload.",
        unit="s",
    )
    outbox_size: int = _field(
        1000, "Messages held while offline. Bounds memory; past it, the policy decides."
    )
    outbox_policy: OutboxPolicy = _field(
        OutboxPolicy.REJECT_NEW,
        "The caller learns at once that a message was not queued; nothing already accepted is "
        "ever discarded behind its back.",
    )
    outbox_ttl: float = _field(
        120.0,
        "Matches the hub's history window: an action older than a recoverable outage is more "
        "likely stale than wanted. Expiry fails the send; never silent.",
        unit="s",
    )

    def __post_init__(self) -> None:
        # ``ClientConfig(jitter="proportional")`` must mean the mode, not an unknown value
        # that compares unequal to every member (and silently picks the wrong spread).
        kinds: dict[str, type[enum.StrEnum]] = {"jitter": Jitter, "outbox_policy": OutboxPolicy}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    choices = ", ".join(repr(m.value) for m in kind)
                    raise ValueError(f"{name} must be one of {choices}, not {value!r}") from None
        check_jitter(ratio=self.jitter_ratio, seconds=self.jitter_seconds)


ConfigT = TypeVar("ConfigT", HubConfig, ClientConfig)


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    """The CLI flag that sets ``field_name``."""
    return "--" + field_name.replace("_", "-")


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind: Any = type(field.default)
    try:
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(field.name)}={raw!r}: {exc}") from None


def from_env(
    cls: type[ConfigT],
    *,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ConfigT:
    """Build a config: keywords win over ``TETHER_*`` variables, which win over
    ``defaults`` (an app's own choices, e.g. a team's numbers), which win over Tether's."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dict(defaults or {})
    for field in dataclasses.fields(cls):
        raw = env.get(env_name(field.name))
        if raw is not None:
            values[field.name] = _parse(field, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def camel(name: str) -> str:
    """A field's name in the browser client: ``backoff_base`` -> ``backoffBase``."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def browser_options(config: ClientConfig, names: Iterable[str] | None = None) -> dict[str, Any]:
    """``config`` (all of it, or the fields ``names``) as the browser client's options:
    camelCase keys, JSON values, ready for a page's ``connect(url, options)``."""
    chosen = [f.name for f in dataclasses.fields(config)] if names is None else list(names)
    options: dict[str, Any] = {}
    for name in chosen:
        value = getattr(config, name)
        options[camel(name)] = value.value if isinstance(value, enum.Enum) else value
    return options


def split_overrides(cls: type[ConfigT], options: dict[str, Any]) -> dict[str, Any]:
    """Pop the keys of ``options`` that are fields of ``cls`` and return them."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: options.pop(name) for name in list(options) if name in names}


def add_arguments(parser: argparse.ArgumentParser, cls: type[HubConfig | ClientConfig]) -> None:
    """Add one ``--flag`` per config field; unset flags leave env/defaults in charge."""
    group = parser.add_argument_group(f"{cls.__name__} (also settable as TETHER_* variables)")
    for field in dataclasses.fields(cls):
        kind = type(field.default)
        unit = field.metadata["unit"]
        help_text = (
            f"default {field.default}{' ' + unit if unit else ''}; env {env_name(field.name)}"
        )
        if isinstance(field.default, bool):
            group.add_argument(
                flag_name(field.name),
                dest=field.name,
                action="store_true",
                default=None,
                help=help_text,
            )
        elif isinstance(field.default, enum.Enum):
            group.add_argument(
                flag_name(field.name),
                dest=field.name,
                choices=[m.value for m in type(field.default)],
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                flag_name(field.name), dest=field.name, type=kind, default=None, help=help_text
            )


def markdown_table(cls: type[HubConfig | ClientConfig]) -> str:
    """The configuration table for ``docs/configuration.md``."""
    rows = [
        "| keyword | env / CLI flag | default | why |",
        "|---|---|---|---|",
    ]
    for field in dataclasses.fields(cls):
        default = field.default.value if isinstance(field.default, enum.Enum) else field.default
        unit = field.metadata["unit"]
        shown = f"`{default}`" if default != "" else "*empty*"  # not a blank code span
        rows.append(
            f"| `{field.name}` | `{env_name(field.name)}` / `{flag_name(field.name)}` "
            f"| {shown}{' ' + unit if unit else ''} | {field.metadata['reason']} |"
        )
    return "\n".join(rows)
