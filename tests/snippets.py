"""The documentation's code blocks, as a reader meets them.

Theory of operation: every fenced block in README.md, docs/*.md and deploy/README.md
is a :class:`Snippet`, named by its file and the section it sits in. Python, shell and
HTML blocks are programs a reader will paste and run, so the suites run them
(tests/integration/test_snippets.py: Python and shell; tests/browser/test_snippets.py:
HTML in Chromium). What a block needs first is written *in the block*, as comment lines
starting with ``prerequisite:``; the test knows how to provide each prerequisite it
recognises and fails on one it does not, so a new need cannot slip in unprovided.

Blocks run as written with two mechanical changes, so a test run never collides with a
hub, Redis or nginx the developer has running: the well-known ports (``PORTS``) are
mapped to free ones, and the scratch paths under /tmp to a temporary directory. The
same mapping is applied to the repository files a block reads (``deploy/``,
``examples/``), copied into the scratch directory the block runs in.

Blocks that are data (json, nginx, diagrams) are not run; the few programs that cannot
run inside the suite are listed in ``NOT_RUN`` with the reason, and that list fails the
suite when an entry no longer matches a block (it cannot go stale).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .processes import free_port

ROOT = Path(__file__).resolve().parents[1]

#: Where the documentation lives (what a reader of the repository reads).
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy/README.md"]

#: Languages that are programs; everything else (json, nginx, plain fences) is data.
RUNNABLE = {"python", "sh", "html"}

#: Ports the docs use: hub 8765/8766, nginx 8080, the chaos proxy 9765, Redis 6379.
PORTS = (8765, 8766, 8080, 9765, 6379)

#: Scratch directories the docs name; mapped under the test's temporary directory.
SCRATCH_PATHS = ("/tmp/tether-lb",)

#: (document, section) -> why the block is not run by the suite.
NOT_RUN = {
    ("docs/benchmarks.md", "How to run"): (
        "make bench runs for about ten minutes on purpose; it is its own job, "
        "run whenever the serving path changes"
    ),
}

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
_PREREQUISITE = re.compile(r"^\s*(?:#|//|<!--)\s*prerequisite:\s*(.+?)\s*(?:-->)?$", re.M)


@dataclass(frozen=True)
class Snippet:
    document: str  # relative to the repository root
    section: str  # the nearest heading above the block
    language: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.document, self.section)

    @property
    def id(self) -> str:
        return f"{self.document}:{self.section}:{self.language}"

    @property
    def prerequisites(self) -> list[str]:
        return _PREREQUISITE.findall(self.text)


def snippets() -> list[Snippet]:
    found: list[Snippet] = []
    for path in DOCUMENTS:
        text = path.read_text()
        headings = [(m.start(), m.group(1)) for m in _HEADING.finditer(text)]
        for fence in _FENCE.finditer(text):
            above = [title for start, title in headings if start < fence.start()]
            found.append(
                Snippet(
                    document=str(path.relative_to(ROOT)),
                    section=above[-1] if above else "",
                    language=fence.group(1),
                    text=fence.group(2),
                )
            )
    return found


def runnable(language: str) -> list[Snippet]:
    return [s for s in snippets() if s.language == language and s.key not in NOT_RUN]


class Scratch:
    """A directory to run blocks in, with the docs' ports and paths mapped to free ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = {port: free_port() for port in PORTS}
        self.paths = {path: str(directory / Path(path).name) for path in SCRATCH_PATHS}
        (directory / ".venv").symlink_to(ROOT / ".venv")
        for tree in ("deploy", "examples"):
            for source in (ROOT / tree).rglob("*"):
                if source.is_file() and "__pycache__" not in source.parts:
                    target = directory / source.relative_to(ROOT)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        target.write_text(self.map(source.read_text()))
                    except UnicodeDecodeError:
                        shutil.copyfile(source, target)

    def map(self, text: str) -> str:
        """``text`` with the well-known ports and scratch paths replaced."""
        for path, replacement in self.paths.items():
            text = text.replace(path, replacement)
        pattern = "|".join(str(port) for port in self.ports)
        return re.sub(
            rf"(?<!\d)({pattern})(?!\d)", lambda m: str(self.ports[int(m.group(1))]), text
        )

    def port(self, documented: int) -> int:
        return self.ports[documented]
