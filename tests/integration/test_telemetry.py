"""``POST /telemetry``: browser clients' reports, counted by kind in /metrics, bounded."""

from __future__ import annotations

import json

import httpx

from tether.server.serve import HubServer

from ..conftest import StartHub


async def metrics(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics")).text


async def test_telemetry_is_off_unless_the_hub_turns_it_on(hub_server: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http_url) as http:
        refused = await http.post("/telemetry", content=b'{"events": []}')
        assert refused.status_code == 404 and "client_telemetry" in refused.json()["message"]


async def test_reports_are_counted_by_kind_from_a_fixed_set(start_hub: StartHub) -> None:
    server = await start_hub(client_telemetry=True)
    report = {
        "events": [
            {"kind": "reconnecting", "at": 1},
            {"kind": "connected", "at": 2},
            {"kind": "reconnect", "at": 2},
            {"kind": "resync", "at": 3, "topic": "t", "gaps": 1},
            {"kind": "made-up-kind-42", "at": 4},
        ],
        "dropped": 7,
        "metrics": {"state": "connected", "rtt": 0.01},
    }
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        # As sendBeacon posts it: text/plain.
        sent = await http.post(
            "/telemetry", content=json.dumps(report), headers={"content-type": "text/plain"}
        )
        assert sent.status_code == 204
        text = await metrics(http)
    assert "tether_client_telemetry_reports_total 1.0" in text
    assert "tether_client_events_dropped_total 7.0" in text
    for kind in ("reconnecting", "connected", "reconnect", "resync", "other"):
        assert f'tether_client_events_total{{kind="{kind}"}} 1.0' in text, kind
    assert "made-up" not in text


async def test_a_bad_report_is_refused_and_changes_nothing(start_hub: StartHub) -> None:
    server = await start_hub(client_telemetry=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for body, status in [
            (b"{not json", 400),
            (b'{"events": [{"at": 1}]}', 400),  # an event without a kind
            (json.dumps({"events": [{"kind": "connected"}] * 101}).encode(), 400),
            (b'{"dropped": -1}', 400),
            (b" " * (16 * 1024 + 1), 413),
        ]:
            response = await http.post("/telemetry", content=body)
            assert response.status_code == status, (body[:40], response.text)
            assert response.json()["code"] in ("invalid_report", "too_big")
        text = await metrics(http)
    assert "tether_client_telemetry_reports_total 0.0" in text
    assert "tether_client_events_total{" not in text


async def test_reports_are_taken_beside_the_websocket_where_the_browser_client_sends_them(
    start_hub: StartHub,
) -> None:
    server = await start_hub(client_telemetry=True)
    report = {"events": [{"kind": "connected", "at": 1}], "dropped": 0}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        # telemetryUrl("ws://host/ws") in tether-telemetry.js: beside the socket's path.
        assert (await http.post("/ws/telemetry", json=report)).status_code == 204
        assert 'tether_client_events_total{kind="connected"} 1.0' in await metrics(http)
