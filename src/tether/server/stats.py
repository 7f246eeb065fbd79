"""The hub's counters, read by ``/metrics`` at scrape time (no global state)."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Upper bounds (s) of the publish round-trip histogram (through a shared broker).
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Client message handlers (``@hub.on``) are application code: from a cache hit to a
#: slow database write, and past ``redis_timeout``-like seconds where one is stuck.
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: One loop turn's fan-out (every pending message of a topic to all its local
#: subscribers): microseconds for a few, milliseconds for thousands; above 10 ms it
#: shows as latency for everyone on the node.
FANOUT_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


@dataclass(slots=True)
class Histogram:
    """A fixed-bucket histogram for ``/metrics``, without any global registry.

    ``counts[i]`` counts observations in ``(bounds[i-1], bounds[i]]``; the last slot
    those above every bound. :meth:`cumulative` gives Prometheus's ``le`` series.
    """

    bounds: tuple[float, ...]
    counts: list[int]
    sum: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, bounds: Iterable[float]) -> Histogram:
        ordered = tuple(sorted(bounds))
        return cls(ordered, [0] * (len(ordered) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` for every bound, then ``(inf, count)``."""
        running = list(itertools.accumulate(self.counts))
        return [*zip(self.bounds, running, strict=False), (math.inf, self.count)]


@dataclass(slots=True)
class HubStats:
    connections_total: int = 0
    disconnections: int = 0
    publishes: int = 0
    deliveries: int = 0
    #: Batched writes to subscribers: ``deliveries / delivery_writes`` is how many message
    #: frames one write carries (above 1 when messages arrive faster than a loop turn).
    delivery_writes: int = 0
    replayed: int = 0
    resumes_with_loss: int = 0
    heartbeat_timeouts: int = 0
    slow_consumers: int = 0
    handshakes_refused: int = 0
    auth_failures: int = 0
    forbidden: int = 0
    sends_handled: int = 0
    sends_deduplicated: int = 0
    overloaded: int = 0
    payloads_refused: int = 0
    undeliverable: int = 0
    internal_errors: int = 0
    #: Publishes refused because the shared broker (Redis) could not be reached.
    publishes_failed: int = 0
    #: History reads that filled a hole the broker's live feed left (Redis pub/sub).
    repairs: int = 0
    #: Topics whose live feed moved to a new epoch (Redis lost or rolled back history).
    epoch_changes: int = 0
    #: Browser clients' telemetry (POST /telemetry): reports, events by kind, and the
    #: events clients dropped from their bounded buffers.
    telemetry_reports: int = 0
    client_events: dict[str, int] = field(default_factory=dict)
    client_events_dropped: int = 0
    #: Round trips of publishes through a shared broker (seconds).
    publish_seconds: Histogram = field(default_factory=lambda: Histogram.of(PUBLISH_BUCKETS))
    #: How long client message handlers ran (seconds): the plan-001 team's
    #: "message duration".
    handler_seconds: Histogram = field(default_factory=lambda: Histogram.of(HANDLER_BUCKETS))
    #: Each loop turn's fan-out: every dirty topic's pending messages written to its
    #: local subscribers (seconds), the plan-001 team's "broadcast duration".
    fanout_seconds: Histogram = field(default_factory=lambda: Histogram.of(FANOUT_BUCKETS))
