"""What operators read: metrics summed over workers, and JSON logs."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import socketio

from gateway.publisher import Publisher
from tests.integration.support import Client, GatewayProcess, metric, subscribed_on_every_worker, wait_for

StartGateway = Callable[..., GatewayProcess]


def test_metrics_are_summed_over_workers(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_LOG_FORMAT="json")
    clients = subscribed_on_every_worker(gateway, 12, "balance", "pnl")
    users = [client.user for client in clients]
    count = len(users)
    assert metric(gateway, "gateway_connections") == count
    assert metric(gateway, "gateway_subscriptions", topic="balance") == count
    with Publisher(config=gateway.config) as publisher:
        for user in users:
            publisher.publish(user, "balance", {"usd": "1"})
    for client in clients:
        client.wait_events("balance", 1)
    wait_for(lambda: metric(gateway, "gateway_updates_delivered_total", topic="balance") == count, 5, "delivered")
    assert metric(gateway, "gateway_updates_published_total", topic="balance") == count
    # Routed: each update reaches only the worker that holds its user.
    assert metric(gateway, "gateway_updates_received_total", topic="balance") == count
    assert metric(gateway, "gateway_publish_to_send_seconds_count") == count
    assert client_refused_counted(gateway)
    for client in clients:
        client.close()
    wait_for(lambda: metric(gateway, "gateway_connections") == 0, 5, "connections gauge back to 0")
    assert metric(gateway, "gateway_subscriptions", topic="balance") == 0
    lines = [line for line in gateway.log().splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert any(json.loads(line).get("logger") == "gunicorn.error" for line in lines)
    assert any("worker" in json.loads(line) for line in lines)


def client_refused_counted(gateway: GatewayProcess) -> bool:
    with pytest.raises(socketio.exceptions.ConnectionError):
        Client(gateway.url, "not-a-token").connect()
    return wait_for(
        lambda: metric(gateway, "gateway_connect_refused_total", reason="invalid_token") >= 1, 5, "refusal counted"
    )
