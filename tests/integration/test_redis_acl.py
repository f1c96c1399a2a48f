"""The Redis users of deploy/redis/users.acl: the gateway and a publisher work with what they are given,
and a publisher cannot do what only the gateway may (M5: Redis is the trust boundary)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from gateway.errors import PublishError
from gateway.publisher import Publisher
from tests.integration.support import REPO, GatewayProcess, RedisServer, unclean_lines, unique_user, wait_for

ACL_FILE = REPO / "deploy" / "redis" / "users.acl"


def acl_users(prefix: str) -> dict[str, tuple[str, list[str]]]:
    """The users of the shipped file, each with a password of its own and this test's key prefix."""
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _, name, *rules = line.split()
        password = uuid.uuid4().hex
        rules = [f">{password}" if rule.startswith(">") else rule.replace("gw:", f"{prefix}:") for rule in rules]
        users[name] = (password, rules)
    return users


@pytest.fixture
def users(redis_client: redis.Redis, prefix: str) -> Iterator[dict[str, tuple[str, list[str]]]]:
    found = acl_users(prefix)
    for name, (_, rules) in found.items():
        redis_client.execute_command("ACL", "SETUSER", f"{prefix}-{name}", "reset", *rules)
    yield {f"{prefix}-{name}": value for name, value in found.items()}
    for name in found:
        redis_client.execute_command("ACL", "DELUSER", f"{prefix}-{name}")


def url_of(redis_server: RedisServer, user: str, password: str) -> str:
    return redis_server.url.replace("redis://", f"redis://{user}:{password}@", 1)


def test_the_gateway_and_a_publisher_work_as_the_shipped_redis_users(
    users: dict[str, tuple[str, list[str]]], start_gateway: Callable[..., GatewayProcess],
    redis_server: RedisServer, prefix: str,
) -> None:
    # ``users`` first: the gateways stop (and remove their records) before the users go.
    gateway_url = url_of(redis_server, f"{prefix}-gateway", users[f"{prefix}-gateway"][0])
    publisher_url = url_of(redis_server, f"{prefix}-publisher", users[f"{prefix}-publisher"][0])
    gateway = start_gateway(redis_url=gateway_url, GATEWAY_WORKERS="1")
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("balance")
    with Publisher(config=dataclasses.replace(gateway.config, redis_url=publisher_url)) as publisher:
        assert publisher.publish(user, "balance", {"cash": "1.00"}) == 1
        assert publisher.is_subscribed(user, "balance")
        assert publisher.user_topics(user) == {"balance"}
        assert client.wait_events("balance", 1)[0]["seq"] == 1
        # What only the gateway may do: Flask-SocketIO's queue, the registry's writes.
        as_publisher = publisher.redis
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_publisher.publish("flask-socketio", json.dumps({"method": "disconnect", "sid": "x"}))
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_publisher.delete(f"{prefix}:topic:balance")
        with pytest.raises(PublishError) as refused:  # a backend job cannot kick anyone
            publisher.disconnect_user(user)
        assert isinstance(refused.value.__cause__, redis.exceptions.NoPermissionError)
        client.close()
        wait_for(lambda: not publisher.is_subscribed(user, "balance"), 5, "the gateway released the records")
    control_url = url_of(redis_server, f"{prefix}-control", users[f"{prefix}-control"][0])
    kicked = gateway.client(user).connect()
    with Publisher(config=dataclasses.replace(gateway.config, redis_url=control_url)) as control:
        assert control.revoke_tokens(user, issued_before=1.0) == 1  # kicks too; refuses only tokens from 1970
    wait_for(lambda: not kicked.sio.connected, 10, "the control user's kick closed the connection")
    assert gateway.http("/readyz").status_code == 200
    assert unclean_lines(gateway.log()) == []


def test_the_operator_user_reads_but_cannot_write(redis_server: RedisServer, prefix: str,
                                                  users: dict[str, tuple[str, list[str]]]) -> None:
    operator = redis.Redis.from_url(url_of(redis_server, f"{prefix}-operator", users[f"{prefix}-operator"][0]))
    try:
        assert operator.smembers(f"{prefix}:topic:balance") == set()
        with pytest.raises(redis.exceptions.NoPermissionError):
            operator.set(f"{prefix}:seq:1:balance", 99)
    finally:
        operator.close()
