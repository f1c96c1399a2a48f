"""Fixtures: one redis-server per session, gunicorn gateways per module or test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from gateway.publisher import Publisher
from tests.integration.edge import AUTH_TIMEOUT, MAX_MESSAGE, PER_USER, REFUSED_LOG
from tests.integration.support import Client, GatewayProcess, RedisServer, gateway_env, unclean_lines, unique_user


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it; or apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def start_gateway(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways for one test; all are stopped after it."""
    started: list[GatewayProcess] = []

    def start(wait: bool = True, redis_url: str | None = None, **env: str) -> GatewayProcess:
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        variables = gateway_env(redis_url or redis_server.url, prefix, home, **env)
        gateway = GatewayProcess(variables, tmp_path / f"gateway{len(started)}.log")
        started.append(gateway)
        return gateway.start(wait=wait)

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway (2 workers) shared by a module's tests; users keep them apart."""
    folder = tmp_path_factory.mktemp("gateway")
    (folder / "home").mkdir()
    env = gateway_env(redis_server.url, f"m{uuid.uuid4().hex[:10]}", folder / "home")
    process = GatewayProcess(env, folder / "gateway.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hostile(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One worker, so that whatever a test does lands on the worker its honest client uses."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "home").mkdir()
    env = gateway_env(
        redis_server.url, f"h{uuid.uuid4().hex[:10]}", folder / "home",
        GATEWAY_WORKERS="1", GATEWAY_MAX_MESSAGE_BYTES=str(MAX_MESSAGE), GATEWAY_AUTH_TIMEOUT=str(AUTH_TIMEOUT),
        GATEWAY_MAX_CONNECTIONS_PER_USER=str(PER_USER),
    )
    process = GatewayProcess(env, folder / "gateway.log").start()
    yield process
    process.stop()


@pytest.fixture
def witness(hostile: GatewayProcess) -> Iterator[Client]:
    """An honest client on the same worker, subscribed to its balance, for the length of one test."""
    user = unique_user()
    client = hostile.client(user).connect()
    client.subscribe("balance")
    pids = hostile.worker_pids()
    log_start = len(hostile.log())
    yield client
    with Publisher(config=hostile.config) as publisher:
        seq = publisher.publish(user, "balance", {"cash": "1.00"})
    got = client.wait_events("balance", 1)
    assert got[-1]["seq"] == seq, "the honest client of the same worker missed its update"
    client.close()
    assert hostile.worker_pids() == pids, "the worker was replaced"
    # A refused queue message is the operator's to fix: one WARNING per reason, checked by its own test.
    assert [line for line in unclean_lines(hostile.log()[log_start:]) if REFUSED_LOG not in line] == []
