"""Generate the browser client's constants from the Python source: one source of truth.

``python -m tether.jsgen`` rewrites ``static/tether-constants.js``; ``--check`` exits 1
when that file is stale (``tests/test_jsgen.py`` does the same in ``make test``). The
browser client imports every default, code, table and limit it shares with the Python
client from that module instead of re-typing them, and validates the hub's frames with
the JSON Schema msgspec derives from :data:`tether.protocol.ServerFrame`.

Each constant carries the reason written beside it in Python (its ``#:`` comment, or the
``ClientConfig`` field's reason), so the browser module explains itself too.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from . import auth, backoff, config, errors, protocol
from .client import aio, lifecycle, session, state
from .config import camel

#: Where the generated module lives: served by the hub beside ``tether.js``.
TARGET = Path(__file__).resolve().parent / "static" / "tether-constants.js"

HEADER = """\
// Generated from the Python source by `python -m tether.jsgen` (make constants): do not
// edit. tests/test_jsgen.py fails when this file is stale. Every value here is the
// Python client's (tether.client, tether.config, tether.errors, tether.protocol); the
// reason beside each is the one written next to it there.
"""


def _reason(module: ModuleType, name: str) -> str:
    """The ``#:`` comment block right above ``name = ...`` in ``module``'s source."""
    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        if line.startswith((f"{name} = ", f"{name}: ")):
            block: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#:"):
                block.insert(0, lines[j][2:].strip())
                j -= 1
            return " ".join(block)
    raise LookupError(f"{module.__name__}.{name} not found")


def _js(value: Any, *, compact: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=None if compact else 2)


def _comment(text: str) -> str:
    out, line = [], "//"
    for word in text.split():
        if len(line) + 1 + len(word) > 92:
            out.append(line)
            line = "//"
        line += " " + word
    out.append(line)
    return "\n".join(out) + "\n" if text else ""


def _const(name: str, value: Any, reason: str = "", *, compact: bool = False) -> str:
    text = _js(value, compact=compact)
    if isinstance(value, dict | list):
        text = f"deepFreeze({text})"
    return f"{_comment(reason)}export const {name} = {text};\n"


def _documented(module: ModuleType, name: str) -> str:
    """``module.name`` as a constant, with the reason written above it in Python."""
    value = getattr(module, name)
    if isinstance(value, frozenset):
        value = sorted(value)
    return _const(name, value, _reason(module, name))


def _enum(cls: type[enum.Enum]) -> dict[str, Any]:
    return {member.name: member.value for member in cls}


def _strip(schema: Any) -> Any:
    """The schema without ``title``/``description`` (prose the validator never reads)."""
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in schema.items() if k not in ("title", "description")}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def render() -> str:
    """The text of ``tether-constants.js`` for the source as it is."""
    fields = dataclasses.fields(config.ClientConfig)

    def default(field: dataclasses.Field[Any]) -> Any:
        value = field.default
        return value.value if isinstance(value, enum.Enum) else value

    parts = [
        HEADER,
        "\nfunction deepFreeze(value) {\n"
        '  if (value && typeof value === "object") {\n'
        "    for (const inner of Object.values(value)) deepFreeze(inner);\n"
        "    Object.freeze(value);\n"
        "  }\n"
        "  return value;\n"
        "}\n\n",
        "// --- protocol (docs/protocol.md) ---\n\n",
        _const("PROTOCOL_VERSION", protocol.PROTOCOL_VERSION),
        _documented(auth, "SUBPROTOCOL"),
        _documented(auth, "TOKEN_SUBPROTOCOL_PREFIX"),
        _documented(protocol, "MAX_COUNT"),
        _documented(protocol, "UNDELIVERABLE"),
        _const("CloseCode", _enum(errors.CloseCode), errors.CloseCode.__doc__ or ""),
        _const("ErrorCode", _enum(errors.ErrorCode), errors.ErrorCode.__doc__ or ""),
        _documented(errors, "NO_RECONNECT_CODES"),
        _documented(errors, "AUTH_FAILURE_CODES"),
        _documented(errors, "HINTED_CODES"),
        _const(
            "SERVER_FRAME_SCHEMA",
            _strip(msgspec.json.schema(protocol.ServerFrame)),
            "JSON Schema of every frame the hub sends (msgspec's, from tether.protocol): "
            "the browser session validates frames against it as the Python one does.",
            compact=True,
        ),
        "\n// --- client defaults (tether.config.ClientConfig; docs/configuration.md) ---\n\n",
        _const("DEFAULTS", {camel(f.name): default(f) for f in fields}),
        _const(
            "DEFAULT_REASONS",
            {camel(f.name): f.metadata["reason"] for f in fields},
            "Why each default is what it is.",
        ),
        _const("Jitter", _enum(backoff.Jitter), backoff.Jitter.__doc__ or ""),
        _const("OutboxPolicy", _enum(config.OutboxPolicy), config.OutboxPolicy.__doc__ or ""),
        "\n// --- the state machine (tether/client/state.py has the theory) ---\n\n",
        _const("State", _enum(state.State)),
        _const("Trigger", _enum(state.Trigger)),
        _const(
            "TRANSITIONS",
            {
                s.value: {t.value: target.value for t, target in moves.items()}
                for s, moves in state.TRANSITIONS.items()
            },
        ),
        "\n// --- session and lifecycle rules (tether/client/session.py, lifecycle.py) ---\n\n",
        _documented(session, "PACE_RATE_SHARE"),
        _const("PACE_BURST_SHARE", session.PACE_BURST_SHARE),
        _documented(session, "RETRYABLE"),
        _documented(session, "DEFAULT_RETRY_MS"),
        _documented(session, "LATE_BY"),
        _documented(lifecycle, "MAX_RETRY_HINT_MS"),
        _documented(lifecycle, "REFRESH_AT"),
        _documented(lifecycle, "REFRESH_RETRY_MIN"),
        _const("REFRESH_RETRY_MAX", lifecycle.REFRESH_RETRY_MAX),
        _documented(aio, "INBOX_SIZE"),
        _documented(aio, "CLIENT_ERROR"),
    ]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.jsgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument(
        "--target", type=Path, default=TARGET, help="the file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    target: Path = args.target
    text = render()
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is stale: run `make constants`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
