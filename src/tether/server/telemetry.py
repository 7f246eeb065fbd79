"""``POST /telemetry``: what browser clients report about themselves, counted in /metrics.

Best-effort by design (docs/protocol.md, HTTP endpoints): a client batches its
lifecycle events in a bounded buffer and posts them now and then, or with
``sendBeacon`` when the page goes; nothing here is acknowledged or retried. The hub
only counts: events by kind, from a fixed set of kinds, so no client can grow the
metric's label set; anything else is ``other``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..client.state import State
from .ports import AppHost

logger = logging.getLogger("tether.telemetry")

#: A report's size: a batch of MAX_EVENTS short events and a metrics snapshot fit well.
MAX_BODY_BYTES = 16 * 1024
#: Events per report (the browser client's buffer holds as many, dropping the oldest).
MAX_EVENTS = 100
#: The kinds counted by name: the client states and the lifecycle moments worth a graph.
KINDS = frozenset({s.value for s in State} | {"reconnect", "resync", "error", "heartbeat_failure"})


class TelemetryEvent(msgspec.Struct):
    kind: Annotated[str, msgspec.Meta(max_length=64)]
    at: int = 0


class TelemetryReport(msgspec.Struct):
    events: Annotated[list[TelemetryEvent], msgspec.Meta(max_length=MAX_EVENTS)] = []
    dropped: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0
    metrics: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(TelemetryReport)


def telemetry_endpoint(hub: AppHost) -> Any:
    async def telemetry(request: Request) -> Response:
        if not hub.config.client_telemetry:
            return JSONResponse(
                {"code": "not_found", "message": "client telemetry is off (client_telemetry)"},
                status_code=404,
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse(
                    {"code": "too_big", "message": f"a report is at most {MAX_BODY_BYTES} bytes"},
                    status_code=413,
                )
        try:
            report = _decoder.decode(bytes(body))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"code": "invalid_report", "message": str(exc)}, status_code=400)
        stats = hub.stats
        stats.telemetry_reports += 1
        stats.client_events_dropped += report.dropped
        for event in report.events:
            kind = event.kind if event.kind in KINDS else "other"
            stats.client_events[kind] = stats.client_events.get(kind, 0) + 1
        logger.debug("client telemetry: %d events", len(report.events))
        return Response(status_code=204)

    return telemetry
