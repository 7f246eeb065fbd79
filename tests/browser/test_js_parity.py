"""The browser client and the Python client share one table, one set of defaults, one backoff."""

from __future__ import annotations

import dataclasses
import enum

import pytest
from playwright.async_api import Page

from tether.backoff import Jitter, backoff_ceiling, backoff_delay
from tether.client.state import TRANSITIONS
from tether.config import ClientConfig


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


async def test_transition_table_is_identical(page: Page) -> None:
    table = await page.evaluate("async () => (await import('/tether.js')).TRANSITIONS")
    expected = {
        state.value: {trigger.value: target.value for trigger, target in moves.items()}
        for state, moves in TRANSITIONS.items()
    }
    assert table == expected


async def test_defaults_are_identical(page: Page) -> None:
    defaults = await page.evaluate("async () => (await import('/tether.js')).DEFAULTS")
    expected = {}
    for field in dataclasses.fields(ClientConfig):
        value = field.default
        expected[camel(field.name)] = value.value if isinstance(value, enum.Enum) else value
    assert defaults == expected


async def test_backoff_ceilings_agree(page: Page) -> None:
    cases = [
        (n, base, factor, cap)
        for n in (0, 1, 3, 7, 50, 10_000)
        for base, factor, cap in ((1, 2, 30), (0.5, 1.5, 60), (2, 1, 10))
    ]
    got = await page.evaluate(
        """async (cases) => {
            const t = await import('/tether.js');
            return cases.map(
                ([n, base, factor, cap]) => t.backoffCeiling(n, { base, factor, cap }));
        }""",
        cases,
    )
    expected = [backoff_ceiling(n, base=b, factor=f, cap=c) for n, b, f, c in cases]
    assert got == expected


async def test_backoff_delays_agree_in_every_jitter_mode(page: Page) -> None:
    cases = [
        (mode, n, base, factor, cap, ratio, seconds, r)
        for mode in ("full", "proportional", "absolute")
        for n in (0, 2, 9)
        for base, factor, cap in ((1, 2, 16), (2, 1.5, 60))
        for ratio, seconds in ((0.3, 0.5), (1.0, 5.0))
        for r in (0.0, 0.25, 0.999)
    ]
    got = await page.evaluate(
        """async (cases) => {
            const t = await import('/tether.js');
            return cases.map(([jitter, n, base, factor, cap, ratio, seconds, r]) =>
                t.backoffDelay(n, { base, factor, cap, jitter, ratio, seconds }, r));
        }""",
        cases,
    )
    expected = [
        backoff_delay(n, base=b, factor=f, cap=c, jitter=Jitter(m), ratio=ratio, seconds=s, rand=r)
        for m, n, b, f, c, ratio, s, r in cases
    ]
    assert got == pytest.approx(expected, abs=1e-12)


async def test_illegal_transition_raises_in_js_too(page: Page) -> None:
    name = await page.evaluate(
        """async () => {
            const t = await import('/tether.js');
            const m = new t.StateMachine();
            try { m.fire('opened'); return 'no error'; } catch (e) { return e.name; }
        }"""
    )
    assert name == "IllegalTransition"
