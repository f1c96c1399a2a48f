"""gateway.client.ResumingClient against a real gateway: every seq once, in order, across a reload."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from gateway.client import ResumingClient
from gateway.publisher import Publisher
from tests.integration.support import GatewayProcess, metric, unique_user, wait_for

StartGateway = Callable[..., GatewayProcess]


def test_resuming_client_sees_every_seq_once_across_a_reload(start_gateway: StartGateway) -> None:
    """About 200 updates a second and a history of 2000: a reload of a few
    seconds stays within history, so the client must get every seq."""
    gateway = start_gateway(GATEWAY_HISTORY_SIZE="2000")
    user = unique_user()
    received: list[int] = []
    client = ResumingClient(
        gateway.url, gateway.token(user), ["balance"], lambda topic, update: received.append(update["seq"]),
        reconnection_delay=0.5, reconnection_delay_max=1.0,
    )
    client.connect()
    assert client.subscribed.wait(10)
    stop = threading.Event()
    last = {"seq": 0}

    def publish(publisher: Publisher) -> None:
        while not stop.wait(0.005) and last["seq"] < 5000:  # pacing, not synchronisation
            last["seq"] = publisher.publish(user, "balance", {"usd": str(last["seq"])})

    with Publisher(config=gateway.config) as publisher:
        pusher = threading.Thread(target=publish, args=(publisher,))
        pusher.start()
        try:
            wait_for(lambda: len(received) > 50, 30, "updates flowing")
            assert gateway.process is not None
            old = set(gateway.worker_pids())
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: not old & set(gateway.worker_pids()), 30, "workers replaced")
            wait_for(lambda: client.subscribed.is_set() and len(client.acks) >= 2, 30, "client resubscribed")
            mark = last["seq"]
            wait_for(lambda: received and received[-1] > mark + 20, 30, "updates flowing after the reload")
        finally:
            stop.set()
            pusher.join(30)
    wait_for(lambda: received and received[-1] == last["seq"], 15, "every update delivered")
    client.close()
    assert received == list(range(1, last["seq"] + 1))
    assert any(topic.get("replayed") for ack in client.acks[1:] for topic in ack["topics"].values())


def publishing(gateway: GatewayProcess, user: str, until: threading.Event) -> tuple[threading.Thread, dict[str, int]]:
    """A thread publishing to ``user``'s balance every 20 ms until ``until`` is set; the last seq published."""
    last = {"seq": 0}

    def publish() -> None:
        with Publisher(config=gateway.config) as publisher:
            while not until.wait(0.02) and last["seq"] < 2000:  # pacing, not synchronisation
                last["seq"] = publisher.publish(user, "balance", {"usd": str(last["seq"])})

    thread = threading.Thread(target=publish)
    thread.start()
    return thread, last


def test_a_client_with_a_token_provider_refreshes_before_exp_and_keeps_its_session(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_TOKEN_REFRESH_LEAD="2", GATEWAY_JWT_LEEWAY="1")
    user = unique_user()
    issued: list[str] = []

    def provider() -> str:  # a short first token, then a long one
        issued.append(gateway.token(user, ttl=3 if not issued else 3600))
        return issued[-1]

    received: list[int] = []
    client = ResumingClient(gateway.url, provider, ["balance"], lambda topic, update: received.append(update["seq"]))
    client.connect()
    assert client.subscribed.wait(10)
    stop = threading.Event()
    pusher, last = publishing(gateway, user, stop)
    try:
        wait_for(lambda: len(issued) == 2, 10, "the client asked its provider for a new token")
        first_end = time.time() + 3  # past the first token's exp and leeway: the clock is this test's subject
        wait_for(lambda: time.time() > first_end, 10, "the first token's end passed")
        mark = last["seq"]
        wait_for(lambda: received and received[-1] > mark + 10, 15, "updates still flowing")
    finally:
        stop.set()
        pusher.join(30)
    wait_for(lambda: received and received[-1] == last["seq"], 15, "every update delivered")
    client.close()
    assert received == list(range(1, last["seq"] + 1))
    assert len(client.acks) == 1, "one session all along: refreshed, never reconnected"


def test_a_client_whose_refresh_fails_connects_again_at_exp_and_misses_nothing(start_gateway: StartGateway) -> None:
    gateway = start_gateway(GATEWAY_TOKEN_REFRESH_LEAD="2", GATEWAY_JWT_LEEWAY="1")
    user = unique_user()
    issued: list[str] = []

    def provider() -> str:  # a short token, then one of another user (refused), then a good one
        ttl, whose = [(3, user), (3600, unique_user()), (3600, user)][min(len(issued), 2)]
        issued.append(gateway.token(whose, ttl=ttl))
        return issued[-1]

    received: list[int] = []
    client = ResumingClient(gateway.url, provider, ["balance"], lambda topic, update: received.append(update["seq"]))
    client.connect()
    assert client.subscribed.wait(10)
    stop = threading.Event()
    pusher, last = publishing(gateway, user, stop)
    try:
        wait_for(lambda: len(client.acks) >= 2 and client.subscribed.is_set(), 20, "connected again with a new token")
        mark = last["seq"]
        wait_for(lambda: received and received[-1] > mark + 10, 15, "updates flowing in the new session")
    finally:
        stop.set()
        pusher.join(30)
    wait_for(lambda: received and received[-1] == last["seq"], 15, "every update delivered")
    client.close()
    assert received == list(range(1, last["seq"] + 1)), "what was published after exp came with the resume"
    assert metric(gateway, "gateway_sessions_expired_total") == 1


def test_a_kicked_client_stays_disconnected(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    user = unique_user()
    client = ResumingClient(gateway.url, lambda: gateway.token(user), ["balance"], lambda topic, update: None)
    client.connect()
    assert client.subscribed.wait(10)
    with Publisher(config=gateway.config) as publisher:
        publisher.disconnect_user(user)
    wait_for(lambda: not client.sio.connected, 10, "kicked")  # set after the client's disconnect handler ran
    assert not any(thread.name == "resuming-client-reconnect" for thread in threading.enumerate()), "no reconnect"
    assert len(client.acks) == 1 and client.sio.eio.state == "disconnected"
    client.close()
