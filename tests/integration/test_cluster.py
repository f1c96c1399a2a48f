"""Redis Cluster: a real cluster of three primaries with a replica each, started once for the session.

What runs on it in this version: the publisher (publish, batches, history,
sharded pub/sub, revocations, kicks) and the key layout (one slot per user's
keys, the layout recorded and checked).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.keys import Keys
from gateway.publisher import Publisher
from harness.cluster import RedisClusterServers
from tests.integration.support import unique_user, wait_for

PARTITIONS = 1024


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_prefix() -> str:
    return f"c{unique_user()[-10:]}"


def publisher_on(cluster: RedisClusterServers, prefix: str, **environ: str) -> Publisher:
    config = Config.from_env({"GATEWAY_REDIS_URL": cluster.url, "GATEWAY_KEY_PREFIX": prefix, **environ},
                             server=False)
    return Publisher(config=config)


def owner_of(cluster: RedisClusterServers, key: str) -> redis.Redis:
    """A plain client of the primary that holds ``key``'s slot."""
    node = cluster.client().get_node_from_key(key)
    return redis.Redis(host=node.host, port=node.port, socket_timeout=5)


def test_updates_of_users_on_every_primary_get_their_seqs_in_order_and_their_history(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    keys = Keys(cluster_prefix, PARTITIONS)
    users = [unique_user() for _ in range(30)]
    owners = {redis_cluster.client().get_node_from_key(keys.seq(user, "pnl")).port for user in users}
    assert len(owners) == 3, "the users spread over the three primaries"
    with publisher_on(redis_cluster, cluster_prefix) as publisher:
        for round_ in range(1, 4):
            assert [publisher.publish(user, "pnl", {"n": round_}) for user in users] == [round_] * len(users)
        batch = publisher.publish_many([(user, topic, {"n": 4}) for user in users for topic in ("pnl", "orders")])
        assert batch == [4, 1] * len(users)
    client = redis_cluster.client()
    entries = client.xrange(keys.history(users[0], "pnl"))
    assert [entry_id.decode() for entry_id, _ in entries] == ["1-0", "2-0", "3-0", "4-0"]
    assert json.loads(entries[-1][1][b"p"])["data"] == {"n": 4}
    assert {key_slot(keys.seq(user, "pnl").encode()) == key_slot(keys.history(user, "pnl").encode())
            for user in users} == {True}


def test_an_update_is_sharded_published_on_the_owner_of_its_users_slot(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    user = unique_user()
    channel = Keys(cluster_prefix, PARTITIONS).channel(user)
    listener = owner_of(redis_cluster, channel).pubsub()
    listener.ssubscribe(channel)
    wait_for(lambda: (message := listener.get_message(timeout=0.1)) is not None
             and message["type"] == "ssubscribe", 5, "subscribed")
    with publisher_on(redis_cluster, cluster_prefix) as publisher:
        seq = publisher.publish(user, "balance", {"usd": "1"})

    def delivered() -> dict[str, object] | None:
        message = listener.get_message(timeout=0.1)
        return message if message is not None and message["type"] == "smessage" else None

    message = wait_for(delivered, 5, "the update on the shard channel")
    head, _, payload = message["data"].decode().partition("\n")
    assert json.loads(payload)["seq"] == seq == 1 and head.startswith("u1 ")
    listener.close()


def test_a_batch_survives_every_primary_forgetting_its_scripts(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    users = [unique_user() for _ in range(12)]
    with publisher_on(redis_cluster, cluster_prefix) as publisher:
        assert publisher.publish_many([(user, "pnl", {}) for user in users]) == [1] * 12
        for node in redis_cluster.primaries():
            node.client().script_flush()
        assert publisher.publish_many([(user, "pnl", {}) for user in users]) == [2] * 12
        assert publisher.publish(users[0], "pnl", {}) == 3


def test_revocations_and_subscriber_reads_work_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    user = unique_user()
    with publisher_on(redis_cluster, cluster_prefix) as publisher:
        before = time.time()
        publisher.revoke_tokens(user)
        assert publisher.registry.is_revoked(user, before - 1) and publisher.registry.is_revoked(user, None)
        assert not publisher.registry.is_revoked(user, time.time() + 60)
        assert publisher.subscribers("pnl") == set() and publisher.user_topics(user) == set()
        assert publisher.registry.published() == {}


def test_the_partition_count_is_recorded_and_a_process_with_another_is_refused(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    publisher_on(redis_cluster, cluster_prefix).close()
    with pytest.raises(ConfigError) as refused:
        publisher_on(redis_cluster, cluster_prefix, GATEWAY_REDIS_PARTITIONS="64")
    assert refused.value.variable == "GATEWAY_REDIS_PARTITIONS" and "1024" in str(refused.value)
