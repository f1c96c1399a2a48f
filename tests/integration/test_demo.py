"""The demo publisher of ``make run`` against a real Redis: believable updates, each topic in seq order."""

from __future__ import annotations

import random
import threading
from decimal import Decimal

from gateway.config import Config
from gateway.demo import DemoBook, run
from gateway.history import History
from tests.integration.support import SECRET, RedisServer, wait_for


def test_the_demo_publishes_one_update_per_topic_and_user_each_round(redis_server: RedisServer, prefix: str) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_JWT_SECRET": SECRET,
                              "GATEWAY_KEY_PREFIX": prefix})
    run(config, users=2, interval=0, rounds=3)
    history = History(redis_server.client(), prefix)
    for user in ("1", "2"):
        for topic in config.topics:
            caught = history.catchup(user, topic, 0, 3)
            assert [update["seq"] for update in caught.updates] == [1, 2, 3], (user, topic)
            assert all(update["user_id"] == user for update in caught.updates)


def test_the_demo_stops_when_asked_without_waiting_out_its_interval(redis_server: RedisServer, prefix: str) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_JWT_SECRET": SECRET,
                              "GATEWAY_KEY_PREFIX": prefix})
    stop = threading.Event()
    demo = threading.Thread(target=run, args=(config,), kwargs={"users": 1, "interval": 3600, "rounds": 0,
                                                                "stop": stop})
    demo.start()
    history = History(redis_server.client(), prefix)
    wait_for(lambda: history.catchup("1", "orders", 0, 1).updates, 10, "the first round published")
    stop.set()
    demo.join(10)
    assert not demo.is_alive()


def test_a_demo_book_never_sells_what_it_does_not_hold() -> None:
    book = DemoBook(random.Random(3))
    for _ in range(2000):
        update = book.step()
        assert all(position["qty"] >= 0 for position in update["positions"])  # type: ignore[attr-defined]
        assert Decimal(update["balance"]["usd"])  # type: ignore[index]
