"""Fault figures: ``python -m bench.faults`` (from the repository root).

Starts a private Redis (append-only) and a gateway with 2 workers, then logs:
how long the records of a worker killed with SIGKILL outlive it (40 clients
spread over both workers), and, over three Redis restarts under publishing,
how long after Redis is back the first update is delivered and /readyz
answers 200, with the seqs a connected client saw.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

from gateway.errors import PublishError
from gateway.publisher import Publisher
from gateway.subscriptions import Registry
from harness.processes import Client, GatewayProcess, RedisServer, gateway_env, unique_user, wait_for

log = logging.getLogger("bench.faults")


def kill_a_worker(gateway: GatewayProcess, registry: Registry) -> None:
    clients = [gateway.client(unique_user()).connect() for _ in range(40)]
    for client in clients:
        client.subscribe("balance")
    held = {worker: set(registry.connections(worker).values()) for worker in registry.owners()}
    victim = max(held, key=lambda worker: len(held[worker]))
    started = time.monotonic()
    os.kill(int(victim.split(":")[-2]), signal.SIGKILL)
    wait_for(lambda: not any(registry.is_subscribed(u, "balance") for u in held[victim]), 30, "records swept")
    log.info("kill -9 of a worker holding %d of 40 clients: its records gone after %.3f s",
             len(held[victim]), time.monotonic() - started)
    wait_for(lambda: len(gateway.worker_pids()) == 2 and gateway.http("/readyz").status_code == 200, 30, "respawned")
    for client in clients:
        client.close()


def restart_redis(gateway: GatewayProcess, redis_server: RedisServer, runs: int = 3) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("pnl")
    with Publisher(config=gateway.config) as publisher:
        for run in range(1, runs + 1):
            redis_server.stop()
            down = time.monotonic()
            wait_for(lambda: gateway.http("/readyz").status_code == 503, 20, "/readyz 503")
            redis_server.start(keep_data=True)
            up = time.monotonic()
            seen = len(client.events["pnl"])

            def arrived(seen: int = seen) -> bool:
                return _delivered(publisher, user, client, seen)

            wait_for(arrived, 20, "delivery", interval=0.02)
            delivered = time.monotonic() - up
            wait_for(lambda: gateway.http("/readyz").status_code == 200, 20, "/readyz 200")
            log.info("Redis restart %d (down %.2f s): first delivery %.3f s and /readyz 200 %.3f s after it was up",
                     run, up - down, delivered, time.monotonic() - up)
    updates = client.events["pnl"]
    seqs = [update["seq"] for update in updates]
    missing = len(set(range(1, seqs[-1] + 1)) - set(seqs))
    snapshots = sum(1 for update in updates if update.get("snapshot"))
    log.info(
        "a client connected throughout got %d updates up to seq %d: in order %s, repeated %d; %d not sent because "
        "more than GATEWAY_HISTORY_SIZE were missed in an outage, replaced by %d snapshots",
        len(seqs), seqs[-1], seqs == sorted(seqs), len(seqs) - len(set(seqs)), missing, snapshots,
    )
    client.close()


def _delivered(publisher: Publisher, user: str, client: Client, seen: int) -> bool:
    try:
        publisher.publish(user, "pnl", {"probe": True})
    except PublishError:
        return False
    return len(client.events["pnl"]) > seen


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    redis_server = RedisServer(folder)
    redis_server.start(keep_data=True)
    (folder / "home").mkdir()
    env = gateway_env(redis_server.url, f"f{uuid.uuid4().hex[:8]}", folder / "home")
    gateway = GatewayProcess(env, folder / "gateway.log").start()
    try:
        registry = Registry(redis_server.client(), gateway.config.key_prefix)
        kill_a_worker(gateway, registry)
        restart_redis(gateway, redis_server)
    finally:
        gateway.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
