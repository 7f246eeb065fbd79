"""Who may open a connection, and how fast: Origin allowlist, rate and connection caps.

Pure: the caller passes the clock. The hub's handshake paths ask :class:`Admission`
before accepting, and tell it when a connection opens and closes.

* Origin: browsers send it and cannot forge it, so checking it stops cross-site
  WebSocket hijacking (a hostile page opening a socket with the user's cookies).
  Non-browser clients send none and are let through (they need a token anyway
  once auth is on).
* Handshake rate per address: a token bucket, so a reconnecting fleet behind one
  NAT fits in the burst while a flood gets 429 and costs almost nothing.
* Caps: total sessions (503 with Retry-After: load shedding) and per address (429).
* Behind a load balancer listed in ``trusted_proxies``, the client's address is the
  last ``X-Forwarded-For`` hop that is not itself a trusted proxy; the accept gate
  does not charge the balancer's connections, the handshake charges the client.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import HubConfig
from ..ratelimit import TokenBucket

#: Addresses whose handshake buckets are remembered at once. A full bucket is the same
#: as a forgotten one, so evicting the least recently seen loses nothing but bounds
#: memory against floods from many addresses (10,000 x ~100 B = 1 MB).
MAX_TRACKED_ADDRESSES = 10_000


#: Retry-After for a full hub, address or identity: slots free as sessions end, which
#: takes seconds, not the sub-second a rate bucket needs; clients add their own jitter.
CAPACITY_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    retry_after: int | None = None


def parse_origins(value: str) -> frozenset[str] | None:
    """``*`` -> ``None`` (any origin); else the allowed origins, normalised."""
    items = {item.strip().rstrip("/").lower() for item in value.split(",") if item.strip()}
    return None if "*" in items else frozenset(items)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8"`` -> networks; raises ``ValueError`` naming a bad item."""
    networks = []
    for item in (i.strip() for i in value.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {item!r} is not an address or network"
                ) from None
    return tuple(networks)


def is_loopback_host(hostname: str) -> bool:
    """``localhost``, ``*.localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    hostname = hostname.strip("[]").lower()
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class Admission:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.origins = parse_origins(config.allowed_origins)
        #: Bound to loopback: with no origins configured, only loopback pages may connect.
        self.loopback = is_loopback_host(config.host)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._per_address: dict[str, int] = {}
        self._per_identity: dict[str, int] = {}
        self.open = 0
        #: Set by an accept gate that charges each connection to its address's bucket
        #: as it accepts it; the handshake then only checks the caps.
        self.charged_on_accept = False
        self.proxies = parse_networks(config.trusted_proxies)

    def __repr__(self) -> str:
        return f"<Admission open={self.open} tracked={len(self._buckets)}>"

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser
        origin = origin.rstrip("/").lower()
        if self.origins is None:
            return True
        if origin in self.origins:
            return True
        if self.origins:
            return False  # an explicit list, and this origin is not on it
        if self.loopback:
            # Bound to loopback: only pages served from this machine. Comparing with the
            # Host header would let DNS rebinding in (evil.example resolving to 127.0.0.1
            # sends Host = Origin = evil.example:PORT).
            return is_loopback_host(urlsplit(origin).hostname or "")
        # Same origin: the page was served by this host.
        return host is not None and urlsplit(origin).netloc == host.lower()

    def is_proxy(self, address: str) -> bool:
        """Whether ``address`` is one of ``trusted_proxies``."""
        if not self.proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The address a connection is charged to: ``peer``, unless ``peer`` is a
        trusted proxy, then the nearest ``X-Forwarded-For`` hop that is not one."""
        if forwarded_for is None or not self.is_proxy(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if hop and not self.is_proxy(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # garbage from the client's side: charge the proxy
        return peer

    def take(self, address: str, *, now: float) -> bool:
        """Charge one handshake to ``address``'s bucket; False when it is empty."""
        return self._bucket(address, now).take(now)

    def _bucket(self, address: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(address)
        if bucket is None:
            c = self.config
            bucket = self._buckets[address] = TokenBucket(
                rate=c.handshake_rate, burst=c.handshake_burst, now=now
            )
            if len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return bucket

    def check(self, address: str, *, now: float, via_proxy: bool = False) -> Refusal | None:
        """Whether a handshake from ``address`` may proceed (charged to its rate unless
        an accept gate already did: it does not charge a trusted proxy's connections)."""
        c = self.config
        if via_proxy or not self.charged_on_accept:
            bucket = self._bucket(address, now)
            if not bucket.take(now):
                return Refusal(
                    429, "too many handshakes from this address", max(1, round(bucket.wait()))
                )
        if self.open >= c.max_connections:
            return Refusal(503, "hub at its connection limit", CAPACITY_RETRY_AFTER)
        if self._per_address.get(address, 0) >= c.max_connections_per_address:
            return Refusal(429, "too many connections from this address", CAPACITY_RETRY_AFTER)
        return None

    def identity_full(self, subject: str) -> Refusal | None:
        """Checked once the token is verified (anonymous sessions are not counted)."""
        if self._per_identity.get(subject, 0) >= self.config.max_connections_per_identity:
            return Refusal(429, "too many connections for this identity", CAPACITY_RETRY_AFTER)
        return None

    def opened(self, address: str, subject: str | None = None) -> None:
        self.open += 1
        _bump(self._per_address, address, +1)
        if subject is not None:
            _bump(self._per_identity, subject, +1)

    def closed(self, address: str, subject: str | None = None) -> None:
        self.open = max(0, self.open - 1)
        _bump(self._per_address, address, -1)
        if subject is not None:
            _bump(self._per_identity, subject, -1)


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
