"""Resume: what a client missed, in order, before anything newer; snapshots past history."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from gateway.publisher import Publisher
from tests.integration.support import GatewayProcess, unique_user, wait_for

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def publisher(gateway: GatewayProcess) -> Iterator[Publisher]:
    with Publisher(config=gateway.config) as pub:
        yield pub


def seqs(updates: list[dict[str, Any]]) -> list[int]:
    return [update["seq"] for update in updates]


def test_resume_sends_what_was_missed_in_order_before_newer_updates(
    gateway: GatewayProcess, publisher: Publisher
) -> None:
    user = unique_user()
    first = gateway.client(user).connect()
    first.subscribe("pnl")
    for n in range(1, 6):
        publisher.publish(user, "pnl", {"n": n})
    assert seqs(first.wait_events("pnl", 5)) == [1, 2, 3, 4, 5]
    first.close()
    for n in range(6, 10):
        publisher.publish(user, "pnl", {"n": n})
    second = gateway.client(user).connect()
    ack = second.call("subscribe", {"topics": ["pnl"], "since": {"pnl": 5}})
    assert ack["topics"] == {"pnl": {"seq": 9, "replayed": 4}}
    publisher.publish(user, "pnl", {"n": 10})
    received = second.wait_events("pnl", 5)
    assert seqs(received) == [6, 7, 8, 9, 10]
    assert [u["data"]["n"] for u in received] == [6, 7, 8, 9, 10]
    assert not any(u.get("snapshot") for u in received)
    up_to_date = gateway.client(user).connect()
    assert up_to_date.call("subscribe", {"topics": ["pnl"], "since": {"pnl": 10}})["topics"] == {"pnl": {"seq": 10}}
    for client in (second, up_to_date):
        client.close()
    assert up_to_date.events["pnl"] == []


def test_resume_past_the_history_gets_the_latest_once_as_snapshot(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_HISTORY_SIZE="5")
    user = unique_user()
    with Publisher(config=gateway.config) as publisher:
        for n in range(1, 21):
            publisher.publish(user, "orders", {"n": n})
        client = gateway.client(user).connect()
        ack = client.call("subscribe", {"topics": ["orders"], "since": {"orders": 3}})
        assert ack["topics"] == {"orders": {"seq": 20, "snapshot": True}}
        publisher.publish(user, "orders", {"n": 21})
        received = client.wait_events("orders", 2)
    assert [(u["seq"], u.get("snapshot", False)) for u in received] == [(20, True), (21, False)]
    assert received[0]["data"] == {"n": 20}
    client.close()
    history = redis.Redis.from_url(gateway.config.redis_url)
    key = f"{gateway.config.key_prefix}:hist:{user}:orders"
    assert history.xlen(key) == 5
    assert 0 < history.ttl(key) <= gateway.config.history_ttl


def test_a_busy_user_never_evicts_a_quiet_users_history(gateway: GatewayProcess, publisher: Publisher) -> None:
    busy, quiet = unique_user(), unique_user()
    for n in range(3):
        publisher.publish(quiet, "balance", {"n": n})
    for n in range(250):
        publisher.publish(busy, "balance", {"n": n})
    client = gateway.client(quiet).connect()
    assert client.call("subscribe", {"topics": ["balance"], "since": {"balance": 0}})["topics"] == {
        "balance": {"seq": 3, "replayed": 3}
    }
    assert seqs(client.wait_events("balance", 3)) == [1, 2, 3]
    client.close()


def test_resume_under_continuous_publishing_has_no_gap_and_no_repeat(
    gateway: GatewayProcess, publisher: Publisher
) -> None:
    """The publisher never runs more than 60 updates ahead of what the test holds,
    so every resume is within the history (100) and must be a replay."""
    user = unique_user()
    window = threading.Condition()
    state = {"published": 0, "held": 0, "stop": False}

    def publish() -> None:
        while True:
            with window:
                window.wait_for(lambda: state["stop"] or state["published"] - state["held"] < 60, 30)
                if state["stop"] or state["published"] >= 3000:
                    return
            seq = publisher.publish(user, "positions", {"n": state["published"] + 1})
            with window:
                state["published"] = seq

    def hold(updates: list[dict[str, Any]]) -> None:
        with window:
            state["held"] = updates[-1]["seq"]
            window.notify_all()

    first = gateway.client(user).connect()
    first.subscribe("positions")
    pusher = threading.Thread(target=publish)
    pusher.start()
    held: list[int] = []
    try:
        first.wait_events("positions", 40)
        first.close()
        held = seqs(first.events["positions"])
        hold(first.events["positions"])
        for _ in range(5):  # every resume lands in the middle of the flood
            mark = held[-1]
            wait_for(lambda mark=mark: state["published"] > mark + 20, 30, "more published meanwhile")
            again = gateway.client(user).connect()
            ack = again.call("subscribe", {"topics": ["positions"], "since": {"positions": held[-1]}})
            assert "replayed" in ack["topics"]["positions"], ack
            again.wait_events("positions", 30)
            again.close()
            held += seqs(again.events["positions"])
            hold(again.events["positions"])
    finally:
        with window:
            state["stop"] = True
            window.notify_all()
        pusher.join(30)
    assert held == list(range(1, len(held) + 1))
