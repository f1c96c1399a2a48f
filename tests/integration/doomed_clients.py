"""Clients to be killed: ``python -m tests.integration.doomed_clients URL TOKEN...``.

Connects one client per token, subscribes each to ``balance``, writes
``subscribed`` on stdout, then reads nothing more until killed (at most 120 s).
"""

from __future__ import annotations

import sys
import threading

import socketio


def main(url: str, tokens: list[str]) -> None:
    clients = []
    for token in tokens:
        client = socketio.Client(reconnection=False)
        client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        ack = client.call("subscribe", ["balance"], timeout=10)
        assert ack["ok"], ack
        clients.append(client)
    sys.stdout.write("subscribed\n")
    sys.stdout.flush()
    threading.Event().wait(120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
