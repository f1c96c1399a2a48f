"""gateway.client.ResumingClient against a real gateway: every seq once, in order, across a reload."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from gateway.client import ResumingClient
from gateway.publisher import Publisher
from tests.integration.support import GatewayProcess, unique_user, wait_for

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
