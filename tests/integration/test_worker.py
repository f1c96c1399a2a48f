"""Workers that stop, reload, recycle or die: nothing left behind, clients sent on."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import websocket

from gateway.publisher import Publisher
from tests.integration.support import (
    REPO,
    GatewayProcess,
    live_keys,
    registry_of,
    rss_bytes,
    subscribed_clients,
    unclean_lines,
    unique_user,
    wait_for,
)

StartGateway = Callable[..., GatewayProcess]
LOG = logging.getLogger(__name__)


def test_sigterm_sends_clients_away_and_leaves_no_records(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    clients = subscribed_clients(gateway, 20)
    reasons: list[str] = []
    for client in clients:
        client.sio.on("disconnect", lambda reason=None: reasons.append(str(reason)))
    started = time.monotonic()
    assert gateway.stop(signal.SIGTERM) == 0
    elapsed = time.monotonic() - started
    assert elapsed < gateway_graceful_timeout()
    wait_for(lambda: len(reasons) == len(clients), 10, "every client told")
    # A transport loss, not a server disconnect: Socket.IO clients reconnect.
    assert set(reasons) <= {"transport close", "transport error"}
    assert live_keys(gateway) == set()
    assert unclean_lines(gateway.log()) == []


def gateway_graceful_timeout() -> float:
    text = (REPO / "gunicorn.conf.py").read_text()
    return float(text.split("\ngraceful_timeout = ", 1)[1].split("\n", 1)[0])


def test_sighup_reload_moves_clients_to_new_workers(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    clients = [
        gateway.client(unique_user(), reconnection=True, reconnection_delay=0.5, reconnection_delay_max=1.0)
        for _ in range(10)
    ]
    for client in clients:
        client.connect().subscribe("balance")
    old_pids = set(gateway.worker_pids())
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: not old_pids & set(gateway.worker_pids()) and len(gateway.worker_pids()) == 2, 30, "reloaded")
    registry = registry_of(gateway)
    wait_for(lambda: registry.subscribers("balance") == set(), 10, "old workers' records removed")
    wait_for(lambda: all(c.sio.connected for c in clients), 20, "every client reconnected")
    with Publisher(config=gateway.config) as publisher:
        for client in clients:
            client.subscribe("balance")
            publisher.publish(client.user, "balance", {"usd": "1"})
            assert client.wait_events("balance", 1)[0]["seq"] == 1
    owners = {int(worker.split(":")[-2]) for worker in registry.owners()}
    assert owners and owners <= set(gateway.worker_pids())
    for client in clients:
        client.close()
    assert unclean_lines(gateway.log()) == []


@contextmanager
def subscribed_client_process(gateway: GatewayProcess, user: str) -> Iterator[subprocess.Popen[str]]:
    """A client of ``user`` subscribed to ``balance`` in a process of its own, killed at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.doomed_clients", gateway.url, gateway.token(user)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "subscribed"
        yield process
    finally:
        process.kill()
        process.wait(10)


def paced_flood(gateway: GatewayProcess, user: str, count: int) -> None:
    """``count`` updates of 4 KB to ``user``, paced at about what one worker fans out,
    so that Redis never drops the worker as a slow pub/sub subscriber."""
    pause = threading.Event()
    with Publisher(config=gateway.config) as publisher:
        for n in range(count):
            publisher.publish(user, "balance", {"pad": "x" * 4000})
            if n % 100 == 0:
                pause.wait(0.02)  # pacing, not synchronisation


def test_every_connection_is_pinged_each_interval_and_stays_up(start_gateway: StartGateway) -> None:
    """One greenlet pings every connection (gateway.engine.Pinger): each
    client that answers gets a ping every interval and is never dropped."""
    gateway = start_gateway(GATEWAY_WORKERS="1", GATEWAY_PING_INTERVAL="1", GATEWAY_PING_TIMEOUT="2")
    url = gateway.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    sockets = []
    for n in range(5):
        ws = websocket.create_connection(url, timeout=5)
        assert ws.recv().startswith("0{")
        ws.send("40" + json.dumps({"token": gateway.token(f"pinged-{n}")}))
        assert ws.recv().startswith("40{")
        sockets.append(ws)
    pings = dict.fromkeys(range(len(sockets)), 0)

    def answered_three_pings_each() -> bool:
        for n, ws in enumerate(sockets):
            ws.settimeout(0.05)
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            assert message == "2", f"client {n} got {message!r}, not a ping"
            ws.send("3")
            pings[n] += 1
        return min(pings.values()) >= 3

    wait_for(answered_three_pings_each, 15, "three pings answered by every client", interval=0)
    assert gateway.http("/metrics").text.count("gateway_connections 5.0") == 1
    for ws in sockets:
        ws.close()
    assert unclean_lines(gateway.log()) == []


def test_half_open_client_is_dropped_within_the_ping_timeout(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_PING_INTERVAL="1", GATEWAY_PING_TIMEOUT="2")
    user = unique_user()
    registry = registry_of(gateway)
    with subscribed_client_process(gateway, user) as frozen:
        assert registry.is_subscribed(user, "balance")
        os.kill(frozen.pid, signal.SIGSTOP)
        wait_for(lambda: not registry.is_subscribed(user, "balance"), 10, "half-open client dropped")
    assert unclean_lines(gateway.log()) == []


def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_WORKERS="1", GATEWAY_SEND_QUEUE_LIMIT="200")
    user = unique_user()
    registry = registry_of(gateway)
    with subscribed_client_process(gateway, user) as stalled:
        (worker,) = gateway.worker_pids()
        before = rss_bytes(worker)
        os.kill(stalled.pid, signal.SIGSTOP)
        paced_flood(gateway, user, 10_000)  # 40 MB at a client that reads nothing
        wait_for(lambda: not registry.is_subscribed(user, "balance"), 10, "slow client cut off")
        growth = rss_bytes(worker) - before
    LOG.info("slow client: worker grew %.1f MB", growth / 1e6)
    assert growth < 20 * 1024 * 1024, f"worker grew {growth / 1e6:.1f} MB"
    assert 'gateway_send_failures_total{reason="slow_client"} 1.0' in gateway.http("/metrics").text
    assert unclean_lines(gateway.log()) == []


def test_a_client_killed_while_a_write_to_it_is_blocked_is_counted_not_logged(
    start_gateway: StartGateway,
) -> None:
    """The worker is blocked writing to a frozen client (its buffers are full)
    when the client is killed: the failed write is counted as client_gone."""
    gateway = start_gateway(GATEWAY_WORKERS="1", GATEWAY_SEND_QUEUE_LIMIT="100000")
    user = unique_user()
    with subscribed_client_process(gateway, user) as frozen:
        os.kill(frozen.pid, signal.SIGSTOP)
        paced_flood(gateway, user, 6000)  # 24 MB: far more than loopback TCP buffers hold
        os.kill(frozen.pid, signal.SIGKILL)
        frozen.wait(10)
    counted = 'gateway_send_failures_total{reason="client_gone"} 1.0'
    wait_for(lambda: counted in gateway.http("/metrics").text, 10, "the failed write counted")
    registry = registry_of(gateway)
    wait_for(lambda: not registry.is_subscribed(user, "balance"), 1, "records removed within 1 s")
    assert unclean_lines(gateway.log()) == []


def test_churn_leaves_the_same_keys_after_every_round(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    steady = gateway.client(unique_user()).connect()
    steady.subscribe("balance", "pnl")
    baseline = live_keys(gateway)
    for _ in range(4):
        clients = [gateway.client(unique_user()).connect() for _ in range(50)]
        for client in clients:
            client.subscribe("balance", "positions", "pnl", "orders")
        assert len(live_keys(gateway)) > len(baseline)
        for client in clients:
            client.close()
        wait_for(lambda: live_keys(gateway) == baseline, 5, "only live state remains")
    steady.close()
