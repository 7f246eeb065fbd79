"""One scenario list for both clients: each suite implements every scenario, once, and
docs/protocol.md shows the list as it is in scenarios.json."""

from __future__ import annotations

import pytest

from ..browser import test_conformance as browser_suite
from . import test_scenarios as python_suite
from .scenarios import PROTOCOL_MD, SCENARIOS, documented, implemented, render


@pytest.mark.parametrize("suite", [python_suite, browser_suite], ids=["python", "browser"])
def test_every_scenario_runs_on_both_clients(suite: object) -> None:
    found = implemented(suite)
    missing = [f"{s.id} {s.name}" for s in SCENARIOS if s.id not in found]
    assert not missing, f"{suite.__name__} does not implement: {missing}"  # type: ignore[attr-defined]
    assert sorted(found) == [s.id for s in SCENARIOS], "a test marks a scenario not in the list"
    twice = {n: tests for n, tests in found.items() if len(tests) > 1}
    assert not twice, f"one test per scenario: {twice}"


def test_the_protocol_documents_the_list_as_it_is() -> None:
    assert documented(PROTOCOL_MD.read_text()) == render(), (
        "docs/protocol.md is out of step with tests/conformance/scenarios.json: run "
        ".venv/bin/python -m tests.conformance.scenarios"
    )
