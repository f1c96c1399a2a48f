"""The integration tests' real parts: the harness that the benchmark uses too (``harness.processes``), and what
several test modules ask of a running gateway."""

import random
import threading
from collections.abc import Callable, Sequence

import pytest
import redis
import socketio

from gateway.subscriptions import Registry
from harness.processes import (
    REPO,
    SECRET,
    UNCLEAN,
    Client,
    GatewayProcess,
    RedisServer,
    connection_keys,
    free_port,
    gateway_env,
    metric,
    rss_bytes,
    samples,
    unclean_lines,
    unique_user,
    wait_for,
)

__all__ = [
    "REPO", "SECRET", "UNCLEAN", "Client", "GatewayProcess", "RedisServer", "connection_keys", "free_port",
    "gateway_env", "metric", "rss_bytes", "samples", "unclean_lines", "unique_user", "wait_for",
    "registry_of", "live_keys", "subscribed_clients", "holders_by_pid", "subscribed_on_every_worker",
    "refusal_of", "churn",
]


def registry_of(gateway: GatewayProcess) -> Registry:
    return Registry(redis.Redis.from_url(gateway.config.redis_url), gateway.config.key_prefix)


def live_keys(gateway: GatewayProcess) -> set[str]:
    return connection_keys(redis.Redis.from_url(gateway.config.redis_url), gateway.config.key_prefix)


def subscribed_clients(gateway: GatewayProcess, count: int, topic: str = "balance") -> list[Client]:
    clients = []
    for _ in range(count):
        client = gateway.client(unique_user()).connect()
        client.subscribe(topic)
        clients.append(client)
    return clients


def holders_by_pid(gateway: GatewayProcess) -> dict[int, set[str]]:
    """Users whose records each worker process holds."""
    registry = registry_of(gateway)
    return {int(worker.split(":")[-2]): set(registry.connections(worker).values()) for worker in registry.owners()}


def subscribed_on_every_worker(gateway: GatewayProcess, at_least: int, *topics: str) -> list[Client]:
    """At least ``at_least`` clients, each of a user of its own, and more until every worker holds some.

    The kernel hands a new connection to whichever worker accepts first, often
    the same one many times in a row.
    """
    clients: list[Client] = []
    while len(clients) < at_least or len(holders_by_pid(gateway)) < gateway.config.workers:
        assert len(clients) < at_least + 100, "every connection landed on one worker"
        client = gateway.client(unique_user()).connect()
        client.subscribe(*(topics or ("balance",)))
        clients.append(client)
    return clients


def refusal_of(gateway: GatewayProcess, token: str) -> str:
    """The reason the gateway refuses ``token`` at CONNECT."""
    client = Client(gateway.url, token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect()
    (refused,) = client.refused
    return str(refused["reason"])


def churn(make_registry: Callable[[str], Registry], users: Sequence[str], topics: Sequence[str], *,
          workers: int = 6, steps: int = 400) -> tuple[list[str], dict[str, set[str]]]:
    """Invariant 5's load: ``workers`` threads, each a worker's registry, subscribing and releasing at random
    (seeded). Return the workers, and what their connections hold at the end: user -> topics."""
    holdings: dict[str, set[str]] = {}
    lock = threading.Lock()

    def work(worker: str, seed: int) -> None:
        registry, rng = make_registry(worker), random.Random(seed)
        mine: dict[str, tuple[str, set[str]]] = {}
        for _step in range(steps):
            sid = f"s{rng.randrange(8)}"
            user, held = mine.get(sid, (rng.choice(users), set()))
            action = rng.random()
            if action < 0.5:
                wanted = set(rng.sample(list(topics), rng.randint(1, 3)))
                registry.subscribe(sid, user, sorted(wanted))
                mine[sid] = (user, held | wanted)
            elif action < 0.8 and held:
                gone = set(rng.sample(sorted(held), 1))
                registry.release(sid, sorted(gone))
                mine[sid] = (user, held - gone)
            else:
                registry.release(sid)
                mine.pop(sid, None)
        with lock:
            for user, held in mine.values():
                holdings.setdefault(user, set()).update(held)

    names = [f"w{n}" for n in range(workers)]
    threads = [threading.Thread(target=work, args=(name, seed)) for seed, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a worker's churn did not end in time"
    return names, holdings
