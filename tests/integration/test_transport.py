"""The HTTP edge (gateway.transport) over raw sockets: the request head's deadline, what is not a valid
upgrade, and what a worker refuses before one, with an honest client of the same worker still served."""

from __future__ import annotations

import time

from tests.integration.edge import AUTH_TIMEOUT, errors, raw
from tests.integration.support import Client, GatewayProcess, metric, unclean_lines, wait_for


def test_a_half_sent_request_is_closed_after_the_header_deadline(hostile: GatewayProcess, witness: Client) -> None:
    with raw(hostile) as client:
        client.send(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 1")
        started = time.monotonic()
        assert client.ended(AUTH_TIMEOUT + 5)
        assert time.monotonic() - started >= AUTH_TIMEOUT - 0.5


def test_polling_to_a_websocket_only_gateway_is_refused_quietly(hostile: GatewayProcess, witness: Client) -> None:
    before = errors(hostile, "bad_transport")
    with raw(hostile) as client:
        client.send(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _ = client.response_head()
    assert status == 400
    wait_for(lambda: errors(hostile, "bad_transport") == before + 1, 5, "bad_transport counted")


def test_a_garbage_request_line_gets_400(hostile: GatewayProcess, witness: Client) -> None:
    with raw(hostile) as client:
        client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n")
        assert client.ended(5)


def test_a_bad_origin_is_refused_and_counted_every_time(hostile: GatewayProcess, witness: Client) -> None:
    before = metric(hostile, "gateway_connect_refused_total", reason="bad_origin")
    for _ in range(3):
        with raw(hostile) as client:
            client.send(client.upgrade_request(headers={"Origin": "https://evil.example"}))
            status, _ = client.response_head()
            assert status == 400
    wait_for(lambda: metric(hostile, "gateway_connect_refused_total", reason="bad_origin") == before + 3, 5,
             "each refused origin counted")


def test_a_full_worker_refuses_upgrades_but_answers_health_checks(start_gateway: object) -> None:
    gateway: GatewayProcess = start_gateway(GATEWAY_WORKERS="1", GUNICORN_CMD_ARGS="--worker-connections=24")  # type: ignore[operator]
    held = []
    refused = 0
    for _ in range(30):
        client = raw(gateway)
        client.send(client.upgrade_request())
        status, _ = client.response_head()
        if status == 503:
            refused += 1
            client.close()
        else:
            assert status == 101
            held.append(client)
    assert refused > 0 and len(held) >= 20
    assert gateway.http("/healthz").status_code == 200
    assert metric(gateway, "gateway_connect_refused_total", reason="worker_full") == refused
    for client in held:
        client.close()
    assert unclean_lines(gateway.log()) == []
