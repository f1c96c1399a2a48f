"""The subscription registry against a real Redis: its scripts and invariants."""

from __future__ import annotations

import redis

from gateway.subscriptions import ADMITTED, AT_LIMIT, REVOKED, PendingReleases, Registry
from tests.integration.support import RedisServer, churn, connection_keys, free_port

TOPICS = ("balance", "positions", "pnl", "orders")


def live_keys(client: redis.Redis, prefix: str) -> set[str]:
    return connection_keys(client, prefix)


def test_subscribe_records_and_returns_current_seq(redis_client: redis.Redis, prefix: str) -> None:
    registry = Registry(redis_client, prefix, "w1")
    redis_client.set(f"{prefix}:seq:4:balance", 41)
    assert registry.subscribe("s1", "4", ["balance", "pnl"]) == {"balance": 41, "pnl": 0}
    assert registry.is_subscribed("4", "balance") and registry.is_subscribed("4", "pnl")
    assert not registry.is_subscribed("4", "orders") and not registry.is_subscribed("5", "balance")
    assert registry.subscribers("balance") == {"4"}
    assert registry.user_topics("4") == {"balance", "pnl"}
    assert registry.connections("w1") == {"s1": "4"}


def test_release_of_named_topics_and_of_everything(redis_client: redis.Redis, prefix: str) -> None:
    registry = Registry(redis_client, prefix, "w1")
    registry.subscribe("s1", "4", TOPICS)
    assert registry.release("s1", ["pnl", "unknown"]) == ["pnl"]
    assert registry.release("s1", []) == []
    assert registry.user_topics("4") == {"balance", "positions", "orders"}
    assert registry.release("s1") == ["balance", "orders", "positions"]
    assert registry.release("s1") == []
    assert live_keys(redis_client, prefix) == set()


def test_a_topic_stays_until_the_users_last_connection_leaves(redis_client: redis.Redis, prefix: str) -> None:
    phone, laptop = Registry(redis_client, prefix, "w1"), Registry(redis_client, prefix, "w2")
    phone.subscribe("a", "4", ["balance", "pnl"])
    laptop.subscribe("b", "4", ["balance"])
    phone.release("a")
    assert phone.user_topics("4") == {"balance"}
    assert phone.subscribers("pnl") == set()
    laptop.release("b")
    assert phone.user_topics("4") == set() and phone.subscribers("balance") == set()


def test_drop_worker_removes_only_that_workers_records(redis_client: redis.Redis, prefix: str) -> None:
    dead, alive = Registry(redis_client, prefix, "dead"), Registry(redis_client, prefix, "alive")
    for n in range(20):
        dead.subscribe(f"s{n}", str(n), TOPICS[: 1 + n % 4])
    alive.subscribe("x", "7", ["orders"])
    assert alive.drop_worker("dead") == 20
    assert alive.subscribers("orders") == {"7"}
    assert alive.subscribers("balance") == set()
    assert live_keys(redis_client, prefix) == {
        f"{prefix}:worker:alive", f"{prefix}:conn:alive/x", f"{prefix}:subs:7:orders",
        f"{prefix}:topic:orders", f"{prefix}:user:7",
    }


def test_concurrent_writes_from_two_workers_never_corrupt_the_records(
    redis_server: RedisServer, redis_client: redis.Redis, prefix: str
) -> None:
    """Invariant 5: the registry equals what the connections hold, after any interleaving."""
    users = [str(n) for n in range(6)]
    workers, expected = churn(lambda worker: Registry(redis_server.client(), prefix, worker), users, TOPICS)
    registry = Registry(redis_client, prefix)
    for user in users:
        assert registry.user_topics(user) == expected.get(user, set()), user
    for topic in TOPICS:
        assert registry.subscribers(topic) == {u for u, t in expected.items() if topic in t}, topic
    for worker in workers:
        registry.drop_worker(worker)
    assert live_keys(redis_client, prefix) == set()


def test_keys_do_not_grow_with_past_connections(redis_client: redis.Redis, prefix: str) -> None:
    registry = Registry(redis_client, prefix, "w1")
    registry.subscribe("steady", "1", ["balance"])
    baseline = live_keys(redis_client, prefix)
    for round_ in range(5):
        for n in range(100):
            registry.subscribe(f"r{round_}-{n}", str(n), TOPICS)
        for n in range(100):
            registry.release(f"r{round_}-{n}")
        assert live_keys(redis_client, prefix) == baseline


def test_connect_counts_a_users_connections_on_every_worker_up_to_the_limit(
    redis_client: redis.Redis, prefix: str
) -> None:
    phone, laptop = Registry(redis_client, prefix, "w1"), Registry(redis_client, prefix, "w2")
    assert phone.connect("a", "4", limit=2) and laptop.connect("b", "4", limit=2)
    assert phone.connect("a", "4", limit=2), "recording a connection again is harmless"
    assert not laptop.connect("c", "4", limit=2)
    assert phone.user_connections("4") == 2
    assert phone.connections("w1") == {"a": "4"}
    phone.release("a")
    assert laptop.connect("c", "4", limit=2)
    assert laptop.connect("d", "5", limit=0) and laptop.connect("e", "5", limit=0)
    for sid in "bcde":
        laptop.release(sid)
    assert live_keys(redis_client, prefix) == set()


def test_releasing_named_topics_keeps_the_connection_counted(redis_client: redis.Redis, prefix: str) -> None:
    registry = Registry(redis_client, prefix, "w1")
    registry.connect("a", "4", limit=1)
    registry.subscribe("a", "4", ["balance"])
    registry.release("a", ["balance"])
    assert registry.user_connections("4") == 1 and registry.connections("w1") == {"a": "4"}
    registry.release("a")
    assert registry.user_connections("4") == 0 and live_keys(redis_client, prefix) == set()


def test_drop_worker_releases_the_counted_connections_too(redis_client: redis.Redis, prefix: str) -> None:
    dead, alive = Registry(redis_client, prefix, "dead"), Registry(redis_client, prefix, "alive")
    dead.connect("a", "4", limit=1)
    assert not alive.connect("b", "4", limit=1)
    alive.drop_worker("dead")
    assert alive.connect("b", "4", limit=1)
    alive.release("b")


def test_closed_connections_released_together_leave_what_one_at_a_time_would(
    redis_client: redis.Redis, prefix: str
) -> None:
    registry = Registry(redis_client, prefix, "w1")
    other = Registry(redis_client, prefix, "w2")
    for n in range(30):
        registry.subscribe(f"s{n}", str(n % 7), TOPICS[: 1 + n % 4])
    other.subscribe("t", "3", ["balance"])
    registry.connect("s0", "0")
    registry.release_all([f"s{n}" for n in range(30)])
    assert registry.connections("w1") == {}
    assert registry.user_topics("3") == {"balance"}, "another worker's connection of the same user stays"
    assert registry.user_connections("0") == 0
    other.release("t")
    assert live_keys(redis_client, prefix) == set()


def test_releases_asked_during_one_go_in_the_next_round_trip_and_failures_are_retried(
    redis_server: RedisServer, prefix: str
) -> None:
    client = redis_server.client()
    registry = Registry(client, prefix, "w1")
    for n in range(5):
        registry.subscribe(f"s{n}", "4", ["pnl"])
    releases = PendingReleases(registry)
    trips: list[list[str]] = []
    release_all = registry.release_all

    def counted(sids: dict[str, str | None], users: dict[str, str | None]) -> None:
        trips.append(list(sids))
        if len(trips) == 1:  # while the first round trip is under way, four more connections close
            for n in range(1, 5):
                releases.release(f"s{n}", user="4" if n % 2 else None)  # the user known, or read from the index
        release_all(sids, users)

    registry.release_all = counted  # type: ignore[method-assign]
    releases.release("s0")
    assert trips == [["s0"], ["s1", "s2", "s3", "s4"]]
    assert registry.connections("w1") == {} and releases.queued == {}
    unreachable = Registry(redis.Redis(port=free_port(), socket_connect_timeout=0.2), prefix, "w1")
    failing = PendingReleases(unreachable)
    failing.release("s9", user="4")
    assert failing.pending == {"s9": "4"} and failing.queued == {}


def test_a_revocation_refuses_older_tokens_and_is_never_undone(redis_client: redis.Redis, prefix: str) -> None:
    registry = Registry(redis_client, prefix, "w1")
    assert registry.connect("s0", "alice", issued_at=100.0) == ADMITTED
    assert registry.revoke("alice", 200.0) == 200.0
    assert registry.connect("s1", "alice", issued_at=150.0) == REVOKED
    assert registry.connect("s2", "alice", issued_at=None) == REVOKED, "a token that does not say when"
    assert registry.connect("s3", "alice", issued_at=200.0) == ADMITTED
    assert registry.revoke("alice", 50.0) == 200.0, "an earlier time keeps the later one"
    assert registry.connect("s4", "bob", issued_at=1.0) == ADMITTED, "another user is untouched"
    assert set(registry.connections("w1")) == {"s0", "s3", "s4"}, "nothing recorded for a refused token"
    assert registry.connect("s5", "alice", limit=2, issued_at=300.0) == AT_LIMIT


def test_a_release_finds_topics_the_configuration_no_longer_names(redis_client: redis.Redis, prefix: str) -> None:
    """A connection that subscribed before GATEWAY_TOPICS lost a topic still leaves nothing behind."""
    Registry(redis_client, prefix, "w1", topics=TOPICS).subscribe("s1", "4", ["balance", "pnl"])
    narrowed = Registry(redis_client, prefix, "w1", topics=["balance"])
    assert narrowed.release("s1", user="4") == ["balance", "pnl"]
    assert live_keys(redis_client, prefix) == set()


def test_a_release_for_another_user_than_the_connections_changes_nothing(
    redis_client: redis.Redis, prefix: str
) -> None:
    registry = Registry(redis_client, prefix, "w1", topics=TOPICS)
    registry.subscribe("s1", "4", ["balance"])
    assert registry.release("s1", user="5") == []
    assert registry.subscribers("balance") == {"4"}
    assert registry.release("s1", ["balance"], user="4") == ["balance"]
