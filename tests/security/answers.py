"""What a hub may say back to hostile input: shared by the fuzz tests."""

from __future__ import annotations

from typing import Any

#: Every frame type the hub sends after its welcome (the hub → client frames, protocol.md).
ANSWERS = {
    "error",
    "ack",
    "nack",
    "subscribed",
    "unsubscribed",
    "authed",
    "pong",
    "message",
    "ping",
}

#: The ping ``ts`` a fuzz test sends last: its pong proves the connection still answers.
SENTINEL = 987_654_321


def check_answer(frame: dict[str, Any]) -> bool:
    """Assert ``frame`` is a documented answer; True when it is the sentinel's pong."""
    assert frame["type"] in ANSWERS, frame
    if frame["type"] == "error":
        assert frame["code"] and frame["message"], frame
    return frame["type"] == "pong" and frame.get("ts") == SENTINEL
