"""A topic's log: offsets, epoch and bounded history, and what a resume can replay.

Pure: the caller passes the clock (``now``, seconds). The hub's in-memory broker
keeps one :class:`TopicLog` per topic; the encoded ``message`` frame of every
entry is built once, at publish time, and both live fan-out and replay write
those same bytes.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from .protocol import Cursor, Gap, Message, encode


class Entry(NamedTuple):
    """One published message: its offset, publish time (s), encoded frame and epoch."""

    offset: int
    ts: float
    frame: bytes
    epoch: str


@dataclass(frozen=True, slots=True)
class Replay:
    """What a subscribe with a resume position gets: the reply facts and the frames to send.

    ``frames`` are always the contiguous tail of the epoch's history ending at ``head``:
    frame ``i`` carries offset ``head - len(frames) + 1 + i`` (see :meth:`first_offset`).
    """

    epoch: str
    head: int
    recovered: bool
    missing: list[Gap]
    frames: list[bytes] = field(default_factory=list)
    #: How many of ``frames`` a ``rewind`` asked for (a subscribe without a resume): the
    #: subscriber's cursor starts just before them. 0 for a resume.
    rewound: int = 0

    @property
    def first_offset(self) -> int:
        """The offset of ``frames[0]`` (``head + 1`` when there are none)."""
        return self.head - len(self.frames) + 1


class TopicLog:
    """The log of one topic: strictly +1 offsets within an epoch, bounded by count and age."""

    __slots__ = ("_entries", "epoch", "head", "max_age", "max_size", "topic")

    def __init__(
        self, topic: str, *, epoch: str, max_size: int, max_age: float, head: int = 0
    ) -> None:
        if max_size < 0 or max_age < 0:
            raise ValueError("history bounds must be >= 0")
        self.topic = topic
        self.epoch = epoch
        self.head = head
        self.max_size = max_size
        self.max_age = max_age
        self._entries: deque[Entry] = deque()

    def __repr__(self) -> str:
        return (
            f"<TopicLog {self.topic!r} epoch={self.epoch} head={self.head} "
            f"retained={len(self._entries)}>"
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def oldest(self) -> int:
        """The oldest offset still replayable (``head + 1`` when nothing is retained)."""
        return self._entries[0].offset if self._entries else self.head + 1

    def append(self, data: msgspec.Raw, *, now: float) -> Entry:
        """Assign the next offset to ``data``, encode its frame once and retain it."""
        self.head += 1
        frame = encode(
            Message(
                topic=self.topic, epoch=self.epoch, offset=self.head, ts=int(now * 1000), data=data
            )
        )
        entry = Entry(self.head, now, frame, self.epoch)
        if self.max_size > 0:
            self._entries.append(entry)
            if len(self._entries) > self.max_size:
                self._entries.popleft()
        self.prune(now=now)
        return entry

    def prune(self, *, now: float) -> None:
        """Drop entries older than ``max_age``."""
        limit = now - self.max_age
        entries = self._entries
        while entries and entries[0].ts < limit:
            entries.popleft()

    def replay(self, resume: Cursor | None, *, now: float, rewind: int = 0) -> Replay:
        """Everything a subscriber resuming from ``resume`` (or, without one, rewinding
        ``rewind`` messages) must get, and the exact loss."""
        self.prune(now=now)
        oldest = self.oldest
        missing, start = resume_plan(
            resume, epoch=self.epoch, head=self.head, oldest=oldest, rewind=rewind
        )
        frames: list[bytes] = []
        if start <= self.head:
            skip = start - oldest
            frames = [e.frame for e in itertools.islice(self._entries, skip, None)]
        return Replay(
            self.epoch, self.head, not missing, missing, frames, rewound_by(resume, frames)
        )


def resume_plan(
    resume: Cursor | None, *, epoch: str, head: int, oldest: int, rewind: int = 0
) -> tuple[list[Gap], int]:
    """What a resume from ``resume`` has lost, and the first offset to replay to it.

    ``epoch``/``head`` are the topic's now, ``oldest`` its oldest offset still
    replayable (``head + 1`` when none is). Offsets ``start..head`` are to be replayed
    (none when ``start > head``). Every broker answers a resume with this one piece of
    arithmetic, so a gap is reported alike whichever holds the history.

    Without ``resume``, the last ``rewind`` offsets are replayed, or as many as history
    holds: what it no longer holds is not a loss to a subscriber that never had it.
    """
    if resume is None:
        return [], max(oldest, head + 1 - rewind)
    missing: list[Gap] = []
    if resume.epoch == epoch:
        start = resume.offset + 1
        if start < oldest:
            missing.append(Gap(epoch=epoch, start=start, end=oldest - 1))
            start = oldest
    else:
        # History of the client's epoch is gone: whatever followed its cursor is lost,
        # and the new epoch is replayed from its oldest retained offset.
        missing.append(Gap(epoch=resume.epoch, start=resume.offset + 1, end=None))
        if oldest > 1:
            missing.append(Gap(epoch=epoch, start=1, end=oldest - 1))
        start = oldest
    return missing, start


def rewound_by(resume: Cursor | None, frames: list[bytes]) -> int:
    """:attr:`Replay.rewound`: every replayed frame, for a subscribe without a resume."""
    return len(frames) if resume is None else 0
