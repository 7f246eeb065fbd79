"""Prometheus metrics for a hub, read from its counters at scrape time.

Each hub gets its own registry (no process-global state, so several hubs in one
process, as in tests, don't collide), and nothing is recorded on the hot path:
the collector reads :class:`~tether.server.stats.HubStats` when scraped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .ports import AppHost
from .stats import Histogram

COUNTERS = {
    "connections_total": ("tether_connections_opened", "WebSocket sessions opened"),
    "disconnections": ("tether_disconnections", "WebSocket sessions ended, for any reason"),
    "publishes": ("tether_publishes", "Messages published to topics"),
    "deliveries": ("tether_deliveries", "Live message deliveries to subscribers"),
    "delivery_writes": (
        "tether_delivery_writes",
        "Batched writes of live messages to subscribers (deliveries / writes = frames per write)",
    ),
    "replayed": ("tether_replayed", "Messages replayed to resuming subscribers"),
    "resumes_with_loss": ("tether_resumes_with_loss", "Resumes that reported a gap"),
    "heartbeat_timeouts": ("tether_heartbeat_timeouts", "Connections closed as silent (dead)"),
    "slow_consumers": ("tether_slow_consumers", "Subscribers cut off for a full send buffer"),
    "sends_handled": ("tether_sends_handled", "Client messages handled (handler ran)"),
    "sends_deduplicated": ("tether_sends_deduplicated", "Client retries answered from dedup"),
    "handshakes_refused": (
        "tether_handshakes_refused",
        "Connections refused for rate, caps or origin (429/503/403)",
    ),
    "auth_failures": ("tether_auth_failures", "Handshakes or refreshes with a bad token"),
    "forbidden": ("tether_forbidden", "Subscribes or publishes refused by permissions"),
    "overloaded": (
        "tether_overloaded",
        "Connections shed with 1013: frames piled up behind a handler that did not finish",
    ),
    "payloads_refused": (
        "tether_payloads_refused",
        "Publishes refused for a payload not every client can decode (invalid_payload)",
    ),
    "undeliverable": (
        "tether_undeliverable",
        "Messages a client reported it received but could not decode",
    ),
    "publishes_failed": (
        "tether_publishes_failed",
        "Publishes refused because Redis could not be reached (HTTP 503 / 'unavailable')",
    ),
    "repairs": (
        "tether_repairs",
        "History reads that filled a hole in the Redis pub/sub feed (or checked after a reconnect)",
    ),
    "epoch_changes": (
        "tether_epoch_changes",
        "Topics whose live feed moved to a new epoch (Redis lost history): clients resynced",
    ),
    "internal_errors": (
        "tether_internal_errors",
        "Bugs caught by the hub's supervisors (logged with a traceback; the link was cut)",
    ),
}


#: Counters a shared broker keeps (RedisBroker.stats), exported when present.
BROKER_COUNTERS = {
    "pubsub_reconnects": (
        "tether_redis_pubsub_reconnects",
        "Times this node's Redis pub/sub connection was re-established (then repaired)",
    ),
    "epoch_changes": (
        "tether_redis_epochs_started",
        "Topic epochs this node started in Redis because the topic's history was lost or "
        "rolled back",
    ),
}


class HubCollector(Collector):
    def __init__(self, hub: AppHost) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield GaugeMetricFamily(
            "tether_connections", "Open WebSocket sessions", value=hub.connection_count
        )
        yield GaugeMetricFamily("tether_topics", "Topics held in memory", value=len(hub.broker))
        for field, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(hub.stats, field))
        broker_stats = getattr(hub.broker, "stats", None)
        for field, (name, doc) in BROKER_COUNTERS.items():
            if broker_stats is not None and hasattr(broker_stats, field):
                yield CounterMetricFamily(name, doc, value=getattr(broker_stats, field))
        stats = hub.stats
        yield CounterMetricFamily(
            "tether_client_telemetry_reports",
            "Reports browser clients posted to /telemetry (client_telemetry on)",
            value=stats.telemetry_reports,
        )
        yield CounterMetricFamily(
            "tether_client_events_dropped",
            "Lifecycle events browser clients dropped from their bounded telemetry buffers",
            value=stats.client_events_dropped,
        )
        events = CounterMetricFamily(
            "tether_client_events",
            "Lifecycle events browser clients reported, by kind (unknown kinds as 'other')",
            labels=["kind"],
        )
        for kind, count in sorted(stats.client_events.items()):
            events.add_metric([kind], count)
        yield events
        yield _histogram(
            "tether_handler_seconds",
            "How long client message handlers (@hub.on) ran, whatever their outcome",
            stats.handler_seconds,
        )
        yield _histogram(
            "tether_fanout_seconds",
            "One loop turn's fan-out: pending messages written to every local subscriber",
            stats.fanout_seconds,
        )
        if stats.publish_seconds.count:
            yield _histogram(
                "tether_redis_publish_seconds",
                "Round trip of a publish through Redis (offset, history and notification)",
                stats.publish_seconds,
            )


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if le == math.inf else repr(le), count) for le, count in histogram.cumulative()
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.sum)


def make_registry(hub: AppHost) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
