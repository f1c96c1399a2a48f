"""The integration tests' real parts: the harness that the benchmark uses too (``harness.processes``), and what
several test modules ask of a running gateway."""

import redis

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
