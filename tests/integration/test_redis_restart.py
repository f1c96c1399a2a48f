"""Redis goes away and comes back, with or without its data, under publishing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.errors import PublishError
from gateway.publisher import Publisher
from gateway.subscriptions import Registry
from tests.integration.support import Client, GatewayProcess, RedisServer, unique_user, wait_for

StartGateway = Callable[..., GatewayProcess]
#: After Redis is back: seconds for every worker to receive again. The listener
#: retries at most a second apart; the rest is margin for a loaded machine.
BACK_WITHIN = 5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "own-redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start(keep_data=True)
    yield server
    server.stop()


def subscribe_users(gateway: GatewayProcess, count: int) -> list[Client]:
    clients = [gateway.client(unique_user()).connect() for _ in range(count)]
    for client in clients:
        client.subscribe("balance")
    return clients


def delivered_after_restart(publisher: Publisher, clients: list[Client]) -> dict[str, int]:
    """Publish to each client until one update arrives; return publishes per user.

    Updates published while a worker's listener is still reconnecting reach
    no one (pub/sub keeps nothing): they are counted, not expected.
    """
    published: dict[str, int] = {}
    for client in clients:
        before = len(client.events["balance"])
        published[client.user] = 0

        def arrived(client: Client = client, before: int = before) -> bool:
            try:
                publisher.publish(client.user, "balance", {"after": "restart"})
            except PublishError:
                return False
            published[client.user] += 1
            return client.wait_events("balance", before + 1, seconds=0.2) is not None

        wait_for(lambda: _quietly(arrived), BACK_WITHIN, f"delivery to {client.user} after the restart")
    return published


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except AssertionError:
        return False


@pytest.mark.parametrize("keep_data", [False, True], ids=["data-lost", "data-kept"])
def test_gateway_recovers_from_a_redis_restart(
    own_redis: RedisServer, start_gateway: StartGateway, keep_data: bool
) -> None:
    gateway = start_gateway(redis_url=own_redis.url, GATEWAY_HEARTBEAT_SECONDS="0.5")
    clients = subscribe_users(gateway, 6)
    users = {client.user for client in clients}
    config = Config.from_env({"GATEWAY_REDIS_URL": own_redis.url, "GATEWAY_KEY_PREFIX": gateway.config.key_prefix},
                             server=False)
    publisher = Publisher(config=config)
    for client in clients:
        assert publisher.publish(client.user, "balance", {"n": 1}) == 1
        client.wait_events("balance", 1)

    own_redis.stop()
    wait_for(lambda: gateway.http("/readyz").status_code == 503, 10, "/readyz says not ready")
    assert "redis" in gateway.http("/readyz").text
    with pytest.raises(PublishError):
        publisher.publish(clients[0].user, "balance", {"lost": True})

    own_redis.start(keep_data=keep_data)  # without: the append-only file is not read
    registry = Registry(own_redis.client(), gateway.config.key_prefix)
    wait_for(lambda: registry.subscribers("balance") == users, BACK_WITHIN, "registry re-asserted")
    wait_for(lambda: gateway.http("/readyz").status_code == 200, BACK_WITHIN, "/readyz ready again")
    published = delivered_after_restart(publisher, clients)
    for client in clients:
        # Nothing published after the restart is lost: what a worker missed
        # while reconnecting is replayed from history, in order. With its data
        # Redis goes on counting; without, the count starts again at 1.
        first = 2 if keep_data else 1
        expected = [1, *range(first, first + published[client.user])]
        assert [u["seq"] for u in client.wait_events("balance", len(expected))] == expected
        client.close()
    wait_for(lambda: registry.subscribers("balance") == set(), BACK_WITHIN, "records released")
    publisher.close()
    errors = re.findall(r"^\S+ \S+ ERROR \[(\d+)\] (.*)$", gateway.log(), re.MULTILINE)
    assert errors, "a Redis outage is a real fault: logged at ERROR"
    assert len(errors) == len(set(errors)), f"each fault logged once per worker, not per event: {errors}"
