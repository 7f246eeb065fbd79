"""The hub's counters, read by ``/metrics`` at scrape time (no global state)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

#: Upper bounds (s) of the publish round-trip histogram; the last catches the rest.
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, math.inf)


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
    #: Round trips of publishes through a shared broker, as a histogram (seconds).
    publish_seconds: list[int] = field(default_factory=lambda: [0] * len(PUBLISH_BUCKETS))
    publish_seconds_sum: float = 0.0
    publish_seconds_count: int = 0

    def observe_publish(self, seconds: float) -> None:
        self.publish_seconds[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
        self.publish_seconds_sum += seconds
        self.publish_seconds_count += 1
