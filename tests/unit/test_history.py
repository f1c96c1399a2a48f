"""What a (re)subscribing client is sent: the pure decision of gateway.history.plan."""

from __future__ import annotations

from typing import Any

from gateway.history import Catchup, plan


def entries(*seqs: int) -> list[tuple[int, dict[str, Any]]]:
    return [(seq, {"seq": seq, "data": seq}) for seq in seqs]


def test_nothing_published_nothing_sent() -> None:
    assert plan(None, 0, []) == Catchup(current=0)
    assert plan(0, 0, []) == Catchup(current=0)


def test_a_new_subscriber_gets_the_latest_as_snapshot() -> None:
    caught = plan(None, 7, entries(7))
    assert caught.snapshot and [u["seq"] for u in caught.updates] == [7]
    assert caught.updates[0]["snapshot"] is True
    assert caught.ack(7) == {"seq": 7, "snapshot": True}


def test_a_client_level_with_the_topic_gets_nothing() -> None:
    assert plan(7, 7, entries()).updates == []
    assert plan(7, 7, entries()).ack(7) == {"seq": 7}


def test_missed_updates_within_history_are_replayed_in_order() -> None:
    caught = plan(4, 7, entries(5, 6, 7))
    assert not caught.snapshot and [u["seq"] for u in caught.updates] == [5, 6, 7]
    assert caught.ack(7) == {"seq": 7, "replayed": 3}
    assert not any("snapshot" in u for u in caught.updates)


def test_a_gap_in_history_gives_the_latest_once_as_snapshot() -> None:
    caught = plan(2, 9, entries(6, 7, 8, 9))
    assert caught.snapshot and [u["seq"] for u in caught.updates] == [9]


def test_a_client_ahead_of_redis_is_reset_with_a_snapshot() -> None:
    """Redis lost its data: the client's seq is above the new count."""
    caught = plan(41, 3, entries(3))
    assert caught.snapshot and [u["seq"] for u in caught.updates] == [3]


def test_history_gone_and_client_behind_sends_nothing() -> None:
    assert plan(2, 9, []) == Catchup(current=9)


def test_the_payload_in_history_is_not_changed_by_a_snapshot() -> None:
    kept = entries(5)
    plan(None, 5, kept)
    assert "snapshot" not in kept[0][1]
