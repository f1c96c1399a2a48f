"""Redis Cluster: a real cluster of three primaries with a replica each, started once for the session.

What runs on it in this version: the publisher (publish, batches, history,
sharded pub/sub, revocations, kicks), the key layout (one slot per user's
keys, the layout recorded and checked) and the registry (each per-user
script on one node, the worker's index written first and removed last).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from gateway.config import Config
from gateway.errors import ConfigError, PublishError
from gateway.keys import Keys
from gateway.publisher import Publisher
from gateway.subscriptions import ADMITTED, AT_LIMIT, REVOKED, Registry
from harness.cluster import RedisClusterServers
from tests.integration.support import REPO, churn, connection_keys, unique_user, wait_for

PARTITIONS = 1024
TOPICS = ("balance", "positions", "pnl", "orders")


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


# The registry on the cluster: each per-user script on one node, the worker's index in steps of its own.


def registry_on(cluster: RedisClusterServers, prefix: str, worker: str = "w1") -> Registry:
    return Registry(cluster.client(), prefix, worker, topics=TOPICS, partitions=PARTITIONS)


def cluster_keys(cluster: RedisClusterServers, prefix: str) -> set[str]:
    """The connection and worker keys under ``prefix``, on every primary."""
    return set().union(*(connection_keys(node.client(), prefix) for node in cluster.primaries()))


def test_the_registry_records_and_releases_users_of_every_node(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    registry = registry_on(redis_cluster, cluster_prefix)
    users = [unique_user() for _ in range(24)]
    for n, user in enumerate(users):
        assert registry.connect(f"s{n}", user, limit=5) == ADMITTED
        assert registry.subscribe(f"s{n}", user, ["balance", "pnl"]) == {"balance": 0, "pnl": 0}
    assert registry.subscribers("pnl") == set(users) and registry.is_subscribed(users[0], "balance")
    assert registry.user_topics(users[1]) == {"balance", "pnl"} and registry.user_connections(users[1]) == 1
    assert registry.connections("w1") == {f"s{n}": user for n, user in enumerate(users)}
    assert registry.release("s0", ["pnl"], user=users[0]) == ["pnl"]
    assert registry.user_topics(users[0]) == {"balance"}
    assert registry.release("s1") == ["balance", "pnl"], "the user read from the worker's index"
    registry.release_all([f"s{n}" for n in range(2, 24)], {f"s{n}": users[n] for n in range(2, 12)})
    registry.release("s0", user=users[0])
    assert registry.subscribers("pnl") == set() and cluster_keys(redis_cluster, cluster_prefix) == set()


def test_the_per_user_limit_and_revocations_hold_across_workers_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    user = unique_user()
    phone, laptop, tablet = (registry_on(redis_cluster, cluster_prefix, worker) for worker in ("w1", "w2", "w3"))
    assert phone.connect("a", user, limit=2) == laptop.connect("b", user, limit=2) == ADMITTED
    assert tablet.connect("c", user, limit=2) == AT_LIMIT
    assert tablet.connections("w3") == {}, "a refused connection leaves no entry in its worker's index"
    phone.revoke(user, time.time() + 1)
    assert tablet.connect("d", user, issued_at=time.time()) == REVOKED and tablet.connections("w3") == {}
    phone.release("a", user=user)
    laptop.release("b", user=user)
    assert cluster_keys(redis_cluster, cluster_prefix) == set()


def test_a_dead_workers_records_and_lease_are_swept_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    dead, alive = (registry_on(redis_cluster, cluster_prefix, worker) for worker in ("dead", "alive"))
    dead.beat(60)
    for n in range(30):
        dead.subscribe(f"s{n}", unique_user(), TOPICS[: 1 + n % 4])
    survivor = unique_user()
    alive.subscribe("x", survivor, ["orders"])
    assert alive.drop_worker("dead", batch=7) == 30
    assert "dead" not in alive.workers() and alive.owners() == {"alive"}
    assert alive.subscribers("orders") == {survivor} and alive.subscribers("balance") == set()
    alive.release("x", user=survivor)
    assert cluster_keys(redis_cluster, cluster_prefix) == set()


def test_a_worker_reasserts_its_records_and_pipelines_survive_lost_scripts_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    registry = registry_on(redis_cluster, cluster_prefix)
    held = [(f"s{n}", unique_user(), ["balance", "orders"] if n % 2 else []) for n in range(20)]
    for node in redis_cluster.primaries():
        node.client().script_flush()
    assert registry.reassert(held, batch=8) == 20
    assert registry.subscribers("orders") == {user for _, user, topics in held if topics}
    assert registry.connections("w1") == {sid: user for sid, user, _ in held}
    for node in redis_cluster.primaries():
        node.client().script_flush()
    registry.release_all([sid for sid, _, _ in held], {sid: user for sid, user, _ in held})
    assert cluster_keys(redis_cluster, cluster_prefix) == set()


def test_concurrent_writes_from_six_workers_never_corrupt_the_records_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    """Invariant 5 on the cluster: the registry equals what the connections hold, after any interleaving."""
    users = [unique_user() for _ in range(6)]
    workers, expected = churn(lambda worker: registry_on(redis_cluster, cluster_prefix, worker), users, TOPICS,
                              steps=200)
    reader = registry_on(redis_cluster, cluster_prefix, "reader")
    for user in users:
        assert reader.user_topics(user) == expected.get(user, set()), user
    for topic in TOPICS:
        assert reader.subscribers(topic) == {user for user, topics in expected.items() if topic in topics}, topic
    for worker in workers:
        reader.drop_worker(worker)
    assert cluster_keys(redis_cluster, cluster_prefix) == set()


# The Redis users of deploy/redis/users-cluster.acl, set on every node.


CLUSTER_ACL_FILE = REPO / "deploy" / "redis" / "users-cluster.acl"


@pytest.fixture
def cluster_users(redis_cluster: RedisClusterServers, cluster_prefix: str) -> Iterator[dict[str, str]]:
    """The shipped cluster users, with this test's key prefix, on every node: name -> URL."""
    urls = {}
    for line in CLUSTER_ACL_FILE.read_text().splitlines():
        head, *selectors = line.split(" (")  # a selector, "(~key +command ...)", is one rule
        _, name, *rules = head.split()
        password = uuid.uuid4().hex
        rules = [f">{password}" if rule.startswith(">") else rule for rule in rules] + [f"({s}" for s in selectors]
        rules = [rule.replace("gw:", f"{cluster_prefix}:") for rule in rules]
        for node in redis_cluster.nodes:
            node.client().execute_command("ACL", "SETUSER", f"{cluster_prefix}-{name}", "reset", *rules)
        urls[name] = redis_cluster.url.replace("://", f"://{cluster_prefix}-{name}:{password}@", 1)
    yield urls
    for node in redis_cluster.nodes:
        for name in urls:
            node.client().execute_command("ACL", "DELUSER", f"{cluster_prefix}-{name}")


def test_a_publisher_and_the_control_user_work_as_the_shipped_cluster_users_and_no_further(
    redis_cluster: RedisClusterServers, cluster_prefix: str, cluster_users: dict[str, str]
) -> None:
    users = [unique_user() for _ in range(9)]
    with publisher_on(redis_cluster, cluster_prefix, GATEWAY_REDIS_URL=cluster_users["publisher"]) as publisher:
        assert publisher.publish_many([(user, "pnl", {"n": 1}) for user in users]) == [1] * 9
        assert publisher.publish(users[0], "pnl", {"n": 2}) == 2
        assert publisher.subscribers("pnl") == set() and not publisher.is_subscribed(users[0], "pnl")
        keys = publisher.keys
        with pytest.raises(redis.exceptions.NoPermissionError):  # the registry is the gateway's
            publisher.redis.sadd(keys.conns(users[0]), "w/forged")
        with pytest.raises(redis.exceptions.NoPermissionError):  # history is read by the gateway only
            publisher.redis.xrange(keys.history(users[0], "pnl"))
        with pytest.raises(PublishError):  # a backend job cannot kick anyone
            publisher.disconnect_user(users[0])
        with pytest.raises(redis.exceptions.NoPermissionError):  # nor move a seq back (SET: the layout only)
            publisher.redis.set(keys.seq(users[0], "pnl"), 0)
    with publisher_on(redis_cluster, cluster_prefix, GATEWAY_REDIS_URL=cluster_users["control"]) as control:
        assert control.revoke_tokens(users[0], issued_before=1.0) == 0  # no worker listens yet
        assert control.registry.is_revoked(users[0], 0.5)
        with pytest.raises(PublishError):
            control.publish(users[0], "pnl", {})
