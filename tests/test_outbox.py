from __future__ import annotations

import pytest

from tether.config import OutboxPolicy
from tether.errors import OutboxFull
from tether.outbox import Outbox, OutboxItem


def item(id: str, *, key: str | None = None, expires_at: float = 100.0) -> OutboxItem:
    return OutboxItem(id=id, frame=id.encode(), expires_at=expires_at, key=key)


def test_reject_new_refuses_and_keeps_everything_queued() -> None:
    box = Outbox(max_size=2, policy=OutboxPolicy.REJECT_NEW)
    box.add(item("a"))
    box.add(item("b"))
    with pytest.raises(OutboxFull):
        box.add(item("c"))
    assert [i.id for i in box] == ["a", "b"]


def test_drop_oldest_evicts_and_returns_the_victim() -> None:
    box = Outbox(max_size=2, policy=OutboxPolicy.DROP_OLDEST)
    box.add(item("a"))
    box.add(item("b"))
    displaced = box.add(item("c"))
    assert [i.id for i in displaced] == ["a"]
    assert [i.id for i in box] == ["b", "c"]


def test_coalesce_replaces_unsent_item_with_same_key() -> None:
    box = Outbox(max_size=2, policy=OutboxPolicy.COALESCE)
    box.add(item("a", key="cursor"))
    box.add(item("b", key="other"))
    displaced = box.add(item("c", key="cursor"))
    assert [i.id for i in displaced] == ["a"]
    assert [i.id for i in box] == ["b", "c"]


def test_coalesce_never_replaces_an_item_in_flight() -> None:
    box = Outbox(max_size=3, policy=OutboxPolicy.COALESCE)
    box.add(item("a", key="k"))
    box.take_unsent()
    assert box.add(item("b", key="k")) == []
    assert [i.id for i in box] == ["a", "b"]


def test_coalesce_never_replaces_an_item_written_on_a_lost_connection() -> None:
    # Issue 14.6: after a drop every unacked item is "unsent" again, but one that was
    # written may have run on the hub; coalescing it reported MessageDropped falsely.
    box = Outbox(max_size=3, policy=OutboxPolicy.COALESCE)
    box.add(item("a", key="k"))
    box.take_unsent()
    box.mark_all_unsent()  # the connection dropped before the ack
    assert box.add(item("b", key="k")) == []
    assert [i.id for i in box] == ["a", "b"]


def test_coalesce_without_match_rejects_when_full() -> None:
    box = Outbox(max_size=1, policy=OutboxPolicy.COALESCE)
    box.add(item("a", key="x"))
    with pytest.raises(OutboxFull):
        box.add(item("b", key="y"))


def test_ttl_expiry_returns_expired_items() -> None:
    box = Outbox(max_size=5, policy=OutboxPolicy.REJECT_NEW)
    box.add(item("a", expires_at=1))
    box.add(item("b", expires_at=5))
    assert [i.id for i in box.expire(2)] == ["a"]
    assert box.next_expiry() == 5


def test_unsent_and_resend_after_reconnect_keep_order() -> None:
    box = Outbox(max_size=5, policy=OutboxPolicy.REJECT_NEW)
    for id in "abc":
        box.add(item(id))
    for i in box.unsent():
        i.sent = True
    assert box.unsent() == []
    assert box.resolve("b") is not None
    box.mark_all_unsent()
    assert [i.id for i in box.unsent()] == ["a", "c"]
