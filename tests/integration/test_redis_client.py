"""The gateway's Redis URLs against real servers: a Unix socket and a Sentinel-managed primary."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import socketio
from flask_socketio import SocketIO

from gateway.publisher import Publisher
from tests.integration.support import GatewayProcess, RedisServer, free_port, unique_user, wait_for


def test_unix_socket_redis_url(start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer) -> None:
    gateway = start_gateway(redis_url=redis_server.unix_url)
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("balance")
    with Publisher(config=gateway.config) as publisher:
        assert publisher.is_subscribed(user, "balance")
        publisher.publish(user, "balance", {"usd": "5"})
    assert client.wait_events("balance", 1)[0]["seq"] == 1
    client.close()


def test_sentinel_redis_url(
    start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    sentinel = start_sentinel(redis_server, tmp_path)
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/0/gateway-test"
        gateway = start_gateway(redis_url=url)
        user = unique_user()
        client = gateway.client(user).connect()
        client.subscribe("orders")
        with Publisher(config=gateway.config) as publisher:
            publisher.publish(user, "orders", {"id": 1})
        assert client.wait_events("orders", 1)[0]["data"] == {"id": 1}
        # A seed-style emit, as the README shows for Sentinel: Flask-SocketIO hands only redis:// and rediss://
        # to python-socketio (anything else goes to Kombu), so the job uses python-socketio's RedisManager.
        with pytest.raises(RuntimeError, match="Kombu"):
            SocketIO(message_queue=url)
        emitter = socketio.RedisManager(url, channel="flask-socketio", write_only=True)
        emitter.emit("orders", {"id": 2}, room=f"orders_{user}", namespace="/")
        assert client.wait_events("orders", 2)[1] == {"id": 2}
        client.close()
        assert gateway.stop() == 0
    finally:
        sentinel.stop()


class Sentinel:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process, self.port = process, port

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_sentinel(redis_server: RedisServer, folder: Path) -> Sentinel:
    port = free_port()
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor gateway-test 127.0.0.1 {redis_server.port} 1\n"
    )
    process = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)

    def knows_master() -> bool:
        try:
            return bool(client.sentinel_get_master_addr_by_name("gateway-test"))
        except redis.RedisError:
            return False

    wait_for(knows_master, 15, "sentinel knows the primary")
    return Sentinel(process, port)
