"""Heartbeats judged by arrivals: a late (throttled) check probes instead of false-alarming.

Drives the browser client's sans-I/O Session in Chromium with a controlled clock.
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page

SCRIPT = """async (steps) => {
    const t = await import('/tether.js');
    const s = new t.Session({ outbox: { markAllUnsent() {}, unsent() { return []; } },
                              heartbeatInterval: 25, heartbeatTimeout: 20 });
    s.connectionOpened(0);
    const out = [];
    for (const [kind, at] of steps) {
        if (kind === 'poll') {
            const r = s.poll(at);
            out.push({ at, dead: r.dead, pings: r.frames.length });
        } else {
            s.receive(JSON.stringify({ type: 'ping', ts: 1 }), at);
        }
    }
    return out;
}"""


async def run(page: Page, steps: list[tuple[str, float]]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await page.evaluate(SCRIPT, steps)
    return result


async def test_on_time_check_past_deadline_is_dead(page: Page) -> None:
    steps = [("poll", float(at)) for at in range(5, 50, 5)]
    results = await run(page, steps)
    assert [r["dead"] for r in results].index(True) == steps.index(("poll", 45.0))


async def test_late_check_probes_and_survives_if_anything_arrives(page: Page) -> None:
    # The tab slept from t=5 to t=100: its timer fires 95 s late. Frames queued while it
    # slept are delivered right after; the link is alive.
    results = await run(page, [("poll", 5), ("poll", 100), ("frame", 100.5), ("poll", 105)])
    assert results[1] == {"at": 100, "dead": False, "pings": 1}  # probe, not a verdict
    assert results[2]["dead"] is False


async def test_late_check_declares_dead_when_the_probe_gets_no_answer(page: Page) -> None:
    results = await run(page, [("poll", 5), ("poll", 100), ("poll", 110), ("poll", 121)])
    assert [r["dead"] for r in results] == [False, False, False, True]
