"""A worker's lease against real gunicorn and Redis: a worker that dies or falls silent has its records removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis
import socketio

from gateway.lease import sweep_expired
from gateway.subscriptions import Registry
from tests.integration.support import (
    REPO,
    GatewayProcess,
    RedisServer,
    holders_by_pid,
    live_keys,
    registry_of,
    subscribed_on_every_worker,
    unique_user,
    wait_for,
)

StartGateway = Callable[..., GatewayProcess]


def test_kill_9_of_a_worker_removes_its_records_at_once(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_HEARTBEAT_SECONDS="1")
    clients = subscribed_on_every_worker(gateway, 40)
    holders = holders_by_pid(gateway)
    victim, survivor = sorted(holders, key=lambda pid: -len(holders[pid]))
    registry = registry_of(gateway)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not any(registry.is_subscribed(u, "balance") for u in holders[victim]), 3, "victim's records")
    elapsed = time.monotonic() - killed_at
    assert all(registry.is_subscribed(u, "balance") for u in holders[survivor])
    assert elapsed < 3 * gateway.config.heartbeat_seconds
    wait_for(lambda: len(gateway.worker_pids()) == 2 and gateway.http("/readyz").status_code == 200, 20, "respawned")
    for client in clients:
        client.close()
    wait_for(lambda: live_keys(gateway) <= {f"{gateway.config.key_prefix}:workers"}, 5, "every record removed")


def test_a_live_worker_sweeps_a_silent_workers_records(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_HEARTBEAT_SECONDS="0.3")
    client = redis.Redis.from_url(gateway.config.redis_url)
    ghost = Registry(client, gateway.config.key_prefix, "other-host:4242:feedbeef")
    ghost.beat(0.9)
    ghost.subscribe("sid1", "ghost-user", ["pnl", "orders"])
    assert ghost.is_subscribed("ghost-user", "pnl")
    # A sweep releases the records first and the lease last: wait for the whole of it.
    wait_for(
        lambda: ghost.user_topics("ghost-user") == set() and "other-host:4242:feedbeef" not in ghost.workers(),
        5, "ghost's records and lease swept within about three beats",
    )
    wait_for(lambda: "swept the records of 1 connections of dead workers" in gateway.log(), 5, "the sweep logged")


def test_gateway_sweep_removes_dead_workers_now(redis_server: RedisServer, prefix: str) -> None:
    client = redis_server.client()
    dead_pid = dead_process_pid()
    hostname = os.uname().nodename
    dead = Registry(client, prefix, f"{hostname}:{dead_pid}:0badf00d")
    dead.beat(3600)
    dead.subscribe("s", "7", ["balance"])
    orphan = Registry(client, prefix, "elsewhere:12:cafe0000")
    orphan.subscribe("s", "8", ["pnl"])
    alive = Registry(client, prefix, f"{hostname}:{os.getpid()}:a11ce000")
    alive.beat(3600)
    alive.subscribe("s", "9", ["orders"])
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_KEY_PREFIX": prefix}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sweep"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "swept 2 dead workers"
    assert alive.user_topics("7") == set() and alive.user_topics("8") == set()
    assert alive.user_topics("9") == {"orders"}
    assert sweep_expired(alive) == 0


def dead_process_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    return process.pid


def test_the_per_user_limit_holds_across_instances_and_a_killed_worker_gives_its_places_back(
    start_gateway: StartGateway,
) -> None:
    first, second = (start_gateway(GATEWAY_MAX_CONNECTIONS_PER_USER="4", GATEWAY_HEARTBEAT_SECONDS="1")
                     for _ in range(2))
    registry = registry_of(first)
    user = unique_user()
    clients = [instance.client(user).connect() for instance in (first, second, first, second)]
    assert registry.user_connections(user) == 4
    for instance in (first, second):
        extra = instance.client(user)
        with pytest.raises(socketio.exceptions.ConnectionError):
            extra.connect()
        assert extra.refused[0]["reason"] == "too_many_connections", "the limit counts every instance's"
    clients.pop().close()
    wait_for(lambda: registry.user_connections(user) == 3, 10, "a closed connection's place given back")
    clients.append(first.client(user).connect())

    def held_by_pid() -> dict[int, int]:
        return {int(worker.split(":")[-2]): sum(1 for who in registry.connections(worker).values() if who == user)
                for worker in registry.owners()}

    victim, held = max(((pid, count) for pid, count in held_by_pid().items() if pid in first.worker_pids()),
                       key=lambda item: item[1])
    assert held >= 1
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: registry.user_connections(user) == 4 - held, 15, "the killed worker's places given back")
    for _ in range(held):
        clients.append(second.client(user).connect())
    assert registry.user_connections(user) == 4
    for client in clients:
        client.close()
