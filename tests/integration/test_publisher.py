"""The backend API against a real Redis: seq, validation, ordering, failures, CLI."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
import redis

from gateway import protocol
from gateway.config import Config
from gateway.errors import ConfigError, PublishError
from gateway.publisher import Publisher
from tests.integration.support import REPO, RedisServer, free_port, wait_for


@pytest.fixture
def config(redis_server: RedisServer, prefix: str) -> Config:
    return Config.from_env({"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_KEY_PREFIX": prefix}, server=False)


@pytest.fixture
def publisher(config: Config) -> Publisher:
    with Publisher(config=config) as pub:
        yield pub


def listen(client: redis.Redis, channel: str) -> redis.client.PubSub:
    """A subscription to ``channel``, confirmed by Redis before it is returned."""
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    wait_for(lambda: pubsub.get_message(timeout=0.05), 5, "subscribe confirmed")
    return pubsub


def drain(pubsub: redis.client.PubSub, count: int) -> list[protocol.Routed]:
    received: list[protocol.Routed] = []

    def more() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            received.append(protocol.parse_routed(message["data"]))
        return len(received) >= count

    wait_for(more, 15, f"{count} messages on the channel", interval=0)
    return received


def test_seq_counts_per_user_and_topic(publisher: Publisher) -> None:
    assert [publisher.publish(4, "balance", {"usd": "1"}) for _ in range(3)] == [1, 2, 3]
    assert publisher.publish("4", "pnl", {}) == 1
    assert publisher.publish(5, "balance", []) == 1
    assert publisher.publish(4, "balance", None) == 4


def test_message_on_the_user_channel_carries_the_update_and_its_room(
    publisher: Publisher, redis_client: redis.Redis, prefix: str
) -> None:
    pubsub = listen(redis_client, f"{prefix}:u:4")
    publisher.publish(4, "balance", {"usd": "1020.50", "note": '"seq": 99'})
    (message,) = drain(pubsub, 1)
    assert (message.room, message.seq) == ("balance_4", 1)
    payload = json.loads(message.payload)
    assert payload["seq"] == 1 and payload["user_id"] == "4" and payload["topic"] == "balance"
    assert payload["data"] == {"usd": "1020.50", "note": '"seq": 99'}
    assert payload["ts"] == message.ts
    pubsub.close()


def test_publish_many_sends_a_batch_in_order_with_one_seq_each(
    publisher: Publisher, redis_client: redis.Redis, prefix: str
) -> None:
    pubsub = listen(redis_client, f"{prefix}:u:4")
    publisher.publish(4, "pnl", {"n": 0})
    updates = [(4, "balance", {"n": 1}), (4, "pnl", {"n": 2}), ("5", "balance", {"n": 3}), (4, "balance", {"n": 4})]
    assert publisher.publish_many(updates) == [1, 2, 1, 2]
    received = drain(pubsub, 4)
    assert [(m.topic, m.seq, json.loads(m.payload)["data"]["n"]) for m in received] == [
        ("pnl", 1, 0), ("balance", 1, 1), ("pnl", 2, 2), ("balance", 2, 4)
    ]
    assert publisher.publish_many([]) == []
    pubsub.close()


def test_publish_many_after_redis_lost_its_scripts_publishes_each_update_once(
    publisher: Publisher, redis_client: redis.Redis, prefix: str
) -> None:
    pubsub = listen(redis_client, f"{prefix}:u:4")
    assert publisher.publish_many([(4, "balance", {"n": 1})]) == [1]
    redis_client.script_flush()
    assert publisher.publish_many([(4, "balance", {"n": n}) for n in (2, 3, 4)]) == [2, 3, 4]
    assert [m.seq for m in drain(pubsub, 4)] == [1, 2, 3, 4]
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_publish_many_sends_nothing_when_one_update_is_bad(
    publisher: Publisher, redis_client: redis.Redis, prefix: str
) -> None:
    with pytest.raises(ValueError, match="unknown topic"):
        publisher.publish_many([(4, "balance", {"n": 1}), (4, "foo", {})])
    assert redis_client.get(f"{prefix}:seq:4:balance") is None


@pytest.mark.parametrize(
    ("user", "topic", "data"),
    [
        (4, "foo", {}),
        (4, "balance", {"usd": Decimal("1.0")}),
        (4, "balance", {"at": datetime.datetime.now()}),
        (4, "balance", {"raw": b"\x00"}),
        (4, "balance", {"x": float("nan")}),
        (True, "balance", {}),
        ("bad user", "balance", {}),
        (None, "balance", {}),
    ],
)
def test_bad_publish_raises_value_error_before_anything_is_sent(
    publisher: Publisher, redis_client: redis.Redis, prefix: str, user: object, topic: str, data: object
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.psubscribe(f"{prefix}:u:*")
    wait_for(lambda: pubsub.get_message(timeout=0.05), 5, "subscribe confirmed")
    with pytest.raises(ValueError):
        publisher.publish(user, topic, data)  # type: ignore[arg-type]
    assert list(redis_client.scan_iter(f"{prefix}:*")) == []
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_threads_sharing_a_publisher_keep_seq_order_on_the_channel(
    publisher: Publisher, redis_client: redis.Redis, prefix: str
) -> None:
    pubsub = listen(redis_client, f"{prefix}:u:9")
    threads = [
        threading.Thread(target=lambda: [publisher.publish(9, "orders", {"i": i}) for i in range(100)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    seqs = [message.seq for message in drain(pubsub, 400)]
    assert seqs == list(range(1, 401))
    pubsub.close()


def test_publish_raises_when_redis_cannot_take_it(prefix: str) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, server=False)
    with Publisher(config=config) as publisher:
        with pytest.raises(PublishError, match="not published"):
            publisher.publish(4, "balance", {"usd": "1"})
        with pytest.raises(PublishError, match="not fully published"):
            publisher.publish_many([(4, "balance", {"usd": "1"}), (5, "pnl", {})])


def test_publisher_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_REDIS_URL"):
        Publisher(config=Config.from_env({}, server=False))


def test_registry_reads(publisher: Publisher, redis_client: redis.Redis, prefix: str) -> None:
    from gateway.subscriptions import Registry

    Registry(redis_client, prefix, "w").subscribe("s", "4", ["pnl", "orders"])
    assert publisher.is_subscribed(4, "pnl") and not publisher.is_subscribed(4, "balance")
    assert publisher.subscribers("pnl") == {"4"}
    assert publisher.user_topics(4) == {"pnl", "orders"}
    with pytest.raises(ValueError):
        publisher.subscribers("foo")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_gateway_publish_command(config: Config, prefix: str, redis_server: RedisServer) -> None:
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_KEY_PREFIX": prefix}
    assert run_cli("publish", "4", "balance", '{"usd": "1"}', env=env).stdout.strip() == "1"
    assert run_cli("publish", "4", "balance", '{"usd": "2"}', env=env).stdout.strip() == "2"
    bad_json = run_cli("publish", "4", "balance", "{oops", env=env)
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    bad_topic = run_cli("publish", "4", "foo", "{}", env=env)
    assert bad_topic.returncode == 2 and "unknown topic" in bad_topic.stderr
    no_url = run_cli("publish", "4", "balance", "{}", env={k: v for k, v in env.items() if k != "GATEWAY_REDIS_URL"})
    assert no_url.returncode == 1 and no_url.stderr.strip().splitlines() == [
        "gateway: GATEWAY_REDIS_URL: is not set and no redis_url was given"
    ]
