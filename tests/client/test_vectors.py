"""Golden vectors: both clients' sans-I/O cores, driven through the same steps.

Each file in ``tests/vectors/`` is a list of steps (frames and times in) with what must
come out (events, frames, timers, delays, states, counters). This module runs every file
on the Python core (``ClientSession``, ``Lifecycle``) and, through Node, on the browser's
(``static/tether-core.js``, by ``tests/vectors/run.mjs``). Both runners only *execute*
and report what each step produced, in one canonical JSON shape; the comparison is here,
once, so the two clients are held to exactly the same expectations.

The canonical shapes (docs/protocol.md has the frames):

- events: ``delivery`` {topic, epoch, offset, ts, data, recovered}; ``resync`` {topic,
  missing, cursor}; ``confirmed`` {topic, recovered, cursor}; ``resolved`` {id, ok,
  result | code, message}; ``welcome`` {session}; ``error`` {code, ref} (not the
  message: decoder wording differs by language); ``refused`` {topic, code, message};
- frames out: parsed JSON objects; counters, lifecycle fields and `session_id` (the hub's
  id for the connection, from `welcome`): snake_case names.

An ``expect`` holds only what the step checks: a missing key is not compared, and
``counters`` compares only the counters it names. The expected string ``"$any-string"``
matches any string: it stands for human wording each language may phrase its own way
(the ``reason`` of an ``undeliverable`` report is a decoder's error message).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tether.client.lifecycle import (
    Failure,
    Lifecycle,
    handshake_closed,
    handshake_refused,
    parse_close_hint,
    refresh_delay,
)
from tether.client.session import (
    ClientSession,
    Delivery,
    Event,
    Resolved,
    Resync,
    ServerError,
    SubscriptionConfirmed,
    SubscriptionRefused,
    Welcomed,
)
from tether.config import ClientConfig, OutboxPolicy
from tether.errors import IllegalTransition, OutboxFull
from tether.outbox import Outbox
from tether.protocol import Cursor

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILES = sorted(VECTORS.glob("*.json"))
NODE_RUNNER = VECTORS / "run.mjs"


# --- the Python core, run step by step ---------------------------------------------------


def _cursor(cursor: Cursor | None) -> dict[str, Any] | None:
    return None if cursor is None else {"epoch": cursor.epoch, "offset": cursor.offset}


def _event(event: Event) -> dict[str, Any]:
    if isinstance(event, Delivery):
        return {
            "kind": "delivery",
            "topic": event.topic,
            "epoch": event.epoch,
            "offset": event.offset,
            "ts": event.ts,
            "data": msgspec.to_builtins(event.data),
            "recovered": event.recovered,
        }
    if isinstance(event, Resync):
        missing = [
            {"epoch": g.epoch, "from": g.start, "to": g.end, "reason": g.reason}
            for g in event.missing
        ]
        return {
            "kind": "resync",
            "topic": event.topic,
            "missing": missing,
            "cursor": _cursor(event.cursor),
        }
    if isinstance(event, SubscriptionConfirmed):
        return {
            "kind": "confirmed",
            "topic": event.topic,
            "recovered": event.recovered,
            "cursor": _cursor(event.cursor),
        }
    if isinstance(event, Resolved):
        if event.ok:
            return {"kind": "resolved", "id": event.item.id, "ok": True, "result": event.result}
        return {
            "kind": "resolved",
            "id": event.item.id,
            "ok": False,
            "code": str(event.code),
            "message": event.message,
        }
    if isinstance(event, Welcomed):
        return {"kind": "welcome", "session": event.welcome.session}
    if isinstance(event, ServerError):
        return {"kind": "error", "code": str(event.code), "ref": event.ref}
    if isinstance(event, SubscriptionRefused):
        return {
            "kind": "refused",
            "topic": event.topic,
            "code": str(event.code),
            "message": event.message,
        }
    raise AssertionError(f"unknown event {event!r}")


def _frames(frames: list[bytes]) -> list[Any]:
    return [json.loads(f) for f in frames]


def _inbound(step: dict[str, Any]) -> str:
    return step["text"] if "text" in step else json.dumps(step["frame"])


def run_session(vector: dict[str, Any]) -> list[dict[str, Any]]:
    options = vector["session"]
    session = ClientSession(
        outbox=Outbox(
            max_size=options.get("outbox_size", 1000),
            policy=OutboxPolicy(options.get("outbox_policy", "reject-new")),
        ),
        heartbeat_interval=options.get("heartbeat_interval", 25.0),
        heartbeat_timeout=options.get("heartbeat_timeout", 20.0),
        id_prefix=options.get("id_prefix", "c"),
    )
    results: list[dict[str, Any]] = []
    for step in vector["steps"]:
        do = step["do"]
        out: dict[str, Any] = {}
        if do == "subscribe":
            resume = step.get("resume")
            frame = session.subscribe(
                step["topic"],
                resume=None if resume is None else Cursor(**resume),
                rewind=step.get("rewind", 0),
            )
            out["frames"] = [] if frame is None else _frames([frame])
        elif do == "unsubscribe":
            frame = session.unsubscribe(step["topic"])
            out["frames"] = [] if frame is None else _frames([frame])
        elif do == "open":
            out["frames"] = _frames(session.connection_opened(now=step["now"]))
        elif do == "lost":
            session.connection_lost()
        elif do == "receive":
            events, replies = session.receive(_inbound(step), now=step["now"])
            if step.get("hand"):  # the driver hands them to the app (else they wait)
                for event in events:
                    session.handed_to_app(event)
            out["events"] = [_event(e) for e in events]
            out["frames"] = _frames(replies)
        elif do == "poll":
            poll = session.poll(now=step["now"])
            out.update(frames=_frames(poll.frames), dead=poll.dead, wake_at=poll.wake_at)
        elif do == "probe":
            out["frames"] = _frames(session.probe(now=step["now"]))
        elif do in ("send", "publish"):
            if do == "send":
                item = session.make_send(
                    step["event"],
                    step.get("data"),
                    expires_at=step["expires_at"],
                    key=step.get("key"),
                )
            else:
                item = session.make_publish(
                    step["topic"], step.get("data"), expires_at=step["expires_at"]
                )
            out["id"] = item.id
            try:
                out["displaced"] = [old.id for old in session.outbox.add(item)]
            except OutboxFull:
                out["error"] = "OutboxFull"
        elif do == "due":
            frames, wake_at = session.due(now=step["now"])
            out.update(frames=_frames(frames), wake_at=wake_at)
        elif do == "expire":
            out["ids"] = [item.id for item in session.outbox.expire(step["now"])]
        elif do == "check":
            pass
        else:
            raise AssertionError(f"unknown session step {do!r}")
        c = session.counters
        out["counters"] = {
            "messages_received": c.messages_received,
            "messages_recovered": c.messages_recovered,
            "duplicates_dropped": c.duplicates_dropped,
            "resyncs": c.resyncs,
            "undeliverable": c.undeliverable,
            "protocol_errors": c.protocol_errors,
            "rtt": c.rtt,
            "last_heartbeat": c.last_heartbeat,
        }
        out["cursors"] = {t: _cursor(session.cursor(t)) for t in session.topics}
        out["app_cursors"] = {t: _cursor(session.app_cursor(t)) for t in session.topics}
        out["live"] = {t: session.is_live(t) for t in session.topics}
        out["outbox"] = len(session.outbox)
        out["session_id"] = session.session_id
        results.append(out)
    return results


def _lifecycle_step(life: Lifecycle, step: dict[str, Any], out: dict[str, Any]) -> None:
    do = step["do"]
    if do == "start":
        life.start()
    elif do == "begin_attempt":
        life.begin_attempt()
    elif do == "attempt_failed":
        f = step["failure"]
        failure = Failure(f["reason"], hint=f.get("hint"), fatal=f.get("fatal", False))
        out["delay"] = life.attempt_failed(failure)
    elif do in ("handshake_closed", "handshake_refused"):
        if do == "handshake_closed":
            failure = handshake_closed(step["code"], step["reason"], can_refresh=life.can_refresh)
        else:
            failure = handshake_refused(
                step["status"], step.get("retry_after"), can_refresh=life.can_refresh
            )
        out.update(reason=failure.reason, hint=failure.hint, fatal=failure.fatal)
        out["delay"] = life.attempt_failed(failure)
    elif do == "opened":
        out["reconnect"] = life.opened(now=step["now"])
    elif do == "stable":
        out["due"] = life.stable(now=step["now"])
    elif do == "heartbeat_failed":
        life.heartbeat_failed()
    elif do == "closed":
        out["delay"] = life.closed(step["code"], step["reason"], now=step["now"])
    elif do == "crashed":
        out["delay"] = life.crashed()
    elif do == "request_retry":
        life.request_retry()
    elif do == "network_back":
        out["retry"] = life.network_back()
    elif do == "wake":
        out["attempt"] = life.wake()
    elif do == "close":
        life.close()
    elif do == "close_hint":
        out["hint"] = parse_close_hint(step["reason"])
    elif do == "refresh_delay":
        out["delay"] = refresh_delay(
            step["expires_at"], step["now"], failed=step.get("failed", False)
        )
    elif do != "check":
        raise AssertionError(f"unknown lifecycle step {do!r}")


def run_lifecycle(vector: dict[str, Any]) -> list[dict[str, Any]]:
    options = vector["lifecycle"]
    config = ClientConfig(**options.get("config", {}))
    draws = itertools.cycle(options.get("rand", [0.5]))
    life = Lifecycle(
        config, can_refresh=options.get("can_refresh", False), rand=lambda: next(draws)
    )
    results: list[dict[str, Any]] = []
    for step in vector["steps"]:
        out: dict[str, Any] = {}
        try:
            _lifecycle_step(life, step, out)
        except IllegalTransition:
            out["raised"] = "IllegalTransition"  # an illegal move is refused, changing nothing
        out["state"] = life.state.value
        out["counters"] = {
            "attempts": life.attempts,
            "total_reconnects": life.total_reconnects,
            "failed_reconnects": life.failed_reconnects,
            "successful_connects": life.successful_connects,
            "heartbeat_failures": life.heartbeat_failures,
            "circuit_trips": life.circuit_trips,
            "last_error": life.last_error,
            "retry_requested": life.retry_requested,
        }
        results.append(out)
    return results


def run_python(vector: dict[str, Any]) -> list[dict[str, Any]]:
    return run_session(vector) if "session" in vector else run_lifecycle(vector)


# --- the browser core, run by Node --------------------------------------------------------


@functools.cache
def node_results() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:  # make test installs it (the JSDEPS step); CI counts a skip as a failure
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, str(NODE_RUNNER), *map(str, FILES)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"run.mjs failed:\n{done.stderr}"
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def run_js(vector_path: Path) -> list[dict[str, Any]]:
    result = node_results()[vector_path.name]
    if isinstance(result, dict):
        raise AssertionError(f"tether-core.js raised at step {result['step']}: {result['error']}")
    return list(result)


# --- one comparison for both ----------------------------------------------------------------


ANY_STRING = "$any-string"


def same(expected: Any, actual: Any) -> bool:
    if expected == ANY_STRING:
        return isinstance(actual, str)
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, int | float) and isinstance(actual, int | float):
            return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-9)
        return False
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            same(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(same, expected, actual))
    return bool(expected == actual and type(expected) is type(actual))


def check(vector: dict[str, Any], results: list[dict[str, Any]]) -> None:
    assert len(results) == len(vector["steps"])
    for n, (step, actual) in enumerate(zip(vector["steps"], results, strict=True)):
        for key, expected in step.get("expect", {}).items():
            got = actual.get(key)
            if key == "counters":
                got = {name: got[name] for name in expected}
            assert same(expected, got), (
                f"step {n} ({step['do']}{' ' + step['note'] if 'note' in step else ''}): "
                f"{key} expected {expected!r}, got {got!r}"
            )


RUNNERS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    "python": lambda path: run_python(json.loads(path.read_text())),
    "browser": run_js,
}


@pytest.mark.parametrize("client", list(RUNNERS))
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vector(path: Path, client: str) -> None:
    vector = json.loads(path.read_text())
    check(vector, RUNNERS[client](path))


def test_every_vector_checks_something() -> None:
    # A vector without expectations would pass on any client.
    assert FILES, "no golden vectors found"
    for path in FILES:
        steps = json.loads(path.read_text())["steps"]
        assert any("expect" in step for step in steps), path.name


def test_the_comparison_is_strict() -> None:
    # The comparator is what holds both clients to the vectors: it must not be lenient.
    assert not same({"a": 1}, {"a": 1, "b": 2})
    assert not same([1, 2], [1, 2, 3])
    assert not same(None, 0)
    assert not same(True, 1)
    assert not same(1.0, 1.1)
    assert same(0.1 + 0.2, 0.3)
    assert same(2, 2.0)
    assert same(ANY_STRING, "any wording") and not same(ANY_STRING, None)
