"""The one list of conformance scenarios both official clients run.

``scenarios.json`` beside this module is the list (docs/protocol.md shows it, rendered
by :func:`render`). Each client's suite (``tests/conformance/test_scenarios.py`` for
Python, ``tests/browser/test_conformance.py`` for the browser, in Chromium) marks one
test per scenario with :func:`scenario`; ``test_scenario_list.py`` fails if a suite
leaves one out or if the docs drift from the list. After editing the list::

    .venv/bin/python -m tests.conformance.scenarios   # rewrites the docs section
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
PROTOCOL_MD = HERE.parents[1] / "docs" / "protocol.md"
BEGIN = "<!-- scenarios:begin (tests/conformance/scenarios.json) -->"
END = "<!-- scenarios:end -->"


@dataclass(frozen=True, slots=True)
class Scenario:
    id: int
    name: str
    #: What must be observed, in the spec's words (Markdown).
    observe: str

    @property
    def prefix(self) -> str:
        """How every suite's test for it begins: ``test_s02_``."""
        return f"test_s{self.id:02d}_"


SCENARIOS: tuple[Scenario, ...] = tuple(
    Scenario(**entry) for entry in json.loads((HERE / "scenarios.json").read_text())
)
BY_ID = {s.id: s for s in SCENARIOS}

F = TypeVar("F", bound=Callable[..., Any])


def scenario(number: int) -> Callable[[F], F]:
    """Mark a suite's test as the implementation of scenario ``number``."""
    spec = BY_ID[number]

    def mark(test: F) -> F:
        if not test.__name__.startswith(spec.prefix):
            raise ValueError(f"{test.__name__}: scenario {number} tests are named {spec.prefix}*")
        test.scenario = spec  # type: ignore[attr-defined]
        return test

    return mark


def implemented(module: Any) -> dict[int, list[str]]:
    """The scenarios a suite module marks, with the tests that implement each."""
    found: dict[int, list[str]] = {}
    for name, value in vars(module).items():
        spec = getattr(value, "scenario", None)
        if isinstance(spec, Scenario):
            found.setdefault(spec.id, []).append(name)
    return found


def render() -> str:
    """The Markdown list docs/protocol.md shows, between its markers."""
    lines = [BEGIN]
    for s in SCENARIOS:
        head = f"{s.id}. "
        text = f"{head}**{s.name}** — {s.observe}"
        lines += textwrap.wrap(text, width=80, subsequent_indent=" " * len(head))
    lines.append(END)
    return "\n".join(lines)


def documented(text: str) -> str:
    """The section of ``text`` (docs/protocol.md) between the markers, markers included."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main() -> int:
    text = PROTOCOL_MD.read_text()
    PROTOCOL_MD.write_text(text.replace(documented(text), render()))
    print(f"wrote {len(SCENARIOS)} scenarios to {PROTOCOL_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
