"""Watch one user's updates: ``python -m gateway.watch URL TOKEN [TOPIC...]``.

A small client for people trying the gateway: connects over WebSocket with
the token, subscribes, and logs every update as it arrives (Ctrl-C stops).
Needs ``websocket-client`` (installed by ``make run``).
"""

from __future__ import annotations

import logging
import sys

import socketio

from gateway import logs, protocol
from gateway.client import OrderedClient

log = logging.getLogger("gateway.watch")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.exit("usage: python -m gateway.watch URL TOKEN [TOPIC...]")
    url, token, topics = argv[0], argv[1], argv[2:] or list(protocol.DEFAULT_TOPICS)
    logs.configure("INFO", "text")
    client = OrderedClient()

    @client.on("*")
    def update(event: str, payload: object) -> None:
        log.info("%s %s", event, payload)

    @client.event
    def connect_error(data: object) -> None:
        log.error("refused: %s", data)

    try:
        client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError:
        return 1
    log.info("subscribed: %s", client.call("subscribe", {"topics": topics}, timeout=10))
    try:
        client.wait()
    except KeyboardInterrupt:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
