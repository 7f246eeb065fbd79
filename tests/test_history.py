from __future__ import annotations

import json

import msgspec

from tether.history import TopicLog
from tether.protocol import Cursor, Gap


def raw(n: int) -> msgspec.Raw:
    return msgspec.Raw(json.dumps({"n": n}).encode())


def offsets(frames: list[bytes]) -> list[int]:
    return [json.loads(f)["offset"] for f in frames]


def make_log(*, size: int = 100, age: float = 60.0, count: int = 0, now: float = 0.0) -> TopicLog:
    log = TopicLog("t", epoch="E", max_size=size, max_age=age)
    for n in range(count):
        log.append(raw(n), now=now)
    return log


def test_offsets_are_strictly_plus_one_and_frames_carry_them() -> None:
    log = make_log(count=5)
    assert log.head == 5
    replay = log.replay(Cursor(epoch="E", offset=0), now=0)
    assert offsets(replay.frames) == [1, 2, 3, 4, 5]
    first = json.loads(replay.frames[0])
    assert first == {
        "type": "message",
        "topic": "t",
        "epoch": "E",
        "offset": 1,
        "ts": 0,
        "data": {"n": 0},
    }


def test_history_bounded_by_count() -> None:
    log = make_log(size=3, count=10)
    assert len(log) == 3
    assert log.oldest == 8


def test_history_bounded_by_age() -> None:
    log = make_log(age=10)
    for t in range(20):
        log.append(raw(t), now=float(t))
    log.prune(now=20.0)
    assert log.oldest == 11  # appended at t=10..19 survive (t >= now - 10)
    log.prune(now=100.0)
    assert len(log) == 0
    assert log.oldest == log.head + 1


def test_resume_within_history_replays_exactly_the_rest() -> None:
    log = make_log(count=10)
    replay = log.replay(Cursor(epoch="E", offset=6), now=0)
    assert replay.recovered and replay.missing == []
    assert offsets(replay.frames) == [7, 8, 9, 10]
    assert replay.head == 10


def test_resume_at_head_replays_nothing() -> None:
    replay = make_log(count=4).replay(Cursor(epoch="E", offset=4), now=0)
    assert replay.recovered and replay.frames == []


def test_resume_before_history_reports_the_exact_evicted_range() -> None:
    log = make_log(size=5, count=20)  # retains 16..20
    replay = log.replay(Cursor(epoch="E", offset=3), now=0)
    assert not replay.recovered
    assert replay.missing == [Gap(epoch="E", start=4, end=15)]
    assert offsets(replay.frames) == [16, 17, 18, 19, 20]


def test_resume_from_another_epoch_reports_open_gap_and_replays_new_epoch() -> None:
    log = make_log(count=3)
    replay = log.replay(Cursor(epoch="OLD", offset=41), now=0)
    assert replay.missing == [Gap(epoch="OLD", start=42, end=None)]
    assert offsets(replay.frames) == [1, 2, 3]


def test_new_epoch_with_short_history_reports_both_gaps() -> None:
    log = make_log(size=2, count=5)
    replay = log.replay(Cursor(epoch="OLD", offset=7), now=0)
    assert replay.missing == [Gap(epoch="OLD", start=8, end=None), Gap(epoch="E", start=1, end=3)]
    assert offsets(replay.frames) == [4, 5]


def test_no_resume_starts_live() -> None:
    replay = make_log(count=3).replay(None, now=0)
    assert replay.recovered and replay.frames == [] and replay.head == 3


def test_a_rewind_replays_the_last_n_then_starts_live_and_loses_nothing() -> None:
    log = make_log(size=5, count=8)  # retains 4..8
    replay = log.replay(None, now=0, rewind=3)
    assert offsets(replay.frames) == [6, 7, 8] and replay.rewound == 3
    assert replay.recovered and replay.missing == []
    # More than history holds: what it holds, and that is not a loss.
    replay = log.replay(None, now=0, rewind=50)
    assert offsets(replay.frames) == [4, 5, 6, 7, 8] and replay.rewound == 5
    assert replay.recovered and replay.missing == []
    # A resume wins over a rewind: the client has a cursor.
    replay = log.replay(Cursor(epoch="E", offset=7), now=0, rewind=3)
    assert offsets(replay.frames) == [8] and replay.rewound == 0
    # Nothing published yet: nothing to rewind.
    assert make_log().replay(None, now=0, rewind=3).frames == []


def test_zero_size_history_still_counts_offsets_and_reports_loss() -> None:
    log = make_log(size=0, count=4)
    replay = log.replay(Cursor(epoch="E", offset=1), now=0)
    assert replay.missing == [Gap(epoch="E", start=2, end=4)]
    assert replay.frames == []


def test_resume_plan_is_the_arithmetic_every_broker_shares() -> None:
    from tether.history import resume_plan

    plan = resume_plan
    assert plan(None, epoch="E", head=9, oldest=5) == ([], 10)
    assert plan(None, epoch="E", head=9, oldest=5, rewind=2) == ([], 8)
    assert plan(None, epoch="E", head=9, oldest=5, rewind=9) == ([], 5)
    assert plan(None, epoch="E", head=0, oldest=1, rewind=9) == ([], 1)
    assert plan(Cursor(epoch="E", offset=6), epoch="E", head=9, oldest=5) == ([], 7)
    assert plan(Cursor(epoch="E", offset=2), epoch="E", head=9, oldest=5) == (
        [Gap(epoch="E", start=3, end=4)],
        5,
    )
    assert plan(Cursor(epoch="E", offset=30), epoch="E", head=9, oldest=5) == ([], 31)
    assert plan(Cursor(epoch="OLD", offset=3), epoch="E", head=9, oldest=5) == (
        [Gap(epoch="OLD", start=4, end=None), Gap(epoch="E", start=1, end=4)],
        5,
    )
    # Nothing retained (oldest = head + 1): everything after the cursor is a gap.
    assert plan(Cursor(epoch="E", offset=1), epoch="E", head=4, oldest=5) == (
        [Gap(epoch="E", start=2, end=4)],
        5,
    )
