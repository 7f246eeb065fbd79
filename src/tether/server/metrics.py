"""Prometheus metrics for a hub, read from its counters at scrape time.

Each hub gets its own registry (no process-global state, so several hubs in one
process, as in tests, don't collide), and nothing is recorded on the hot path:
the collector reads :class:`~tether.server.hub.HubStats` when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .hub import Hub

COUNTERS = {
    "connections_total": ("tether_connections_opened", "WebSocket sessions opened"),
    "disconnections": ("tether_disconnections", "WebSocket sessions ended, for any reason"),
    "publishes": ("tether_publishes", "Messages published to topics"),
    "deliveries": ("tether_deliveries", "Live message deliveries to subscribers"),
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
    "internal_errors": (
        "tether_internal_errors",
        "Bugs caught by the hub's supervisors (logged with a traceback; the link was cut)",
    ),
}


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield GaugeMetricFamily(
            "tether_connections", "Open WebSocket sessions", value=hub.connection_count
        )
        yield GaugeMetricFamily("tether_topics", "Topics held in memory", value=len(hub.broker))
        for field, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(hub.stats, field))


def make_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
