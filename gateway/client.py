"""A Python client that resumes: it keeps the last seq per topic and asks for what it missed.

```python
from gateway.client import ResumingClient

client = ResumingClient("https://push.example.com", token, ["balance", "pnl"], on_update)
client.connect()          # reconnects by itself, resubscribing with since={topic: last seq}
```

``on_update(topic, update)`` sees every update once and in seq order:

- after a reconnect the subscribe carries ``since``, so the gateway sends what
  was missed before anything newer, or the latest update as a snapshot when
  its history no longer reaches back (``update["snapshot"]`` is true);
- an update whose seq is not above the last one is a repeat and is dropped,
  except seq 1, which starts a new count (Redis lost its data).

``token`` may be a callable that returns a fresh token (a token provider):
on ``token_expiring`` the client sends ``refresh`` with a new one, and if the
gateway still ends the session because the token ran out, it connects again
with a new token and resumes. After a kick it stays disconnected.

``on_update`` runs on the client's reading thread, in arrival order: keep it
short. (python-socketio's own client runs each handler on a thread of its
own, so handlers of consecutive updates can run out of order;
:class:`OrderedClient` runs them one after the other.)

Needs ``websocket-client`` for the WebSocket transport.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import engineio
import socketio

from gateway.errors import Code

log = logging.getLogger(__name__)

OnUpdate = Callable[[str, dict[str, Any]], None]
#: Seconds before a subscribe answered ``unavailable``, or a connect after the token's end, is tried again.
RETRY_SECONDS = 1.0
#: Connects tried after the gateway ended a session whose token ran out.
RECONNECT_ATTEMPTS = 10


class _InOrderEngineIOClient(engineio.Client):  # type: ignore[misc]
    """An Engine.IO client that hands messages over in the order they arrived."""

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)

    def disconnect(self, abort: bool = False, reason: Any = None) -> None:
        # A server's DISCONNECT (a kick) is handled on the reading thread, which cannot wait for itself to end.
        reading = threading.current_thread() is getattr(self, "read_loop_task", None)
        super().disconnect(abort=abort or reading, reason=reason)


class OrderedClient(socketio.Client):  # type: ignore[misc]
    """A python-socketio client whose event handlers run in arrival order."""

    def _engineio_client_class(self) -> type[engineio.Client]:
        return _InOrderEngineIOClient


class ResumingClient:
    """A python-socketio client subscribed to ``topics`` that never misses or repeats a seq."""

    def __init__(
        self, url: str, token: str | Callable[[], str], topics: list[str], on_update: OnUpdate, **options: Any
    ) -> None:
        self.url = url
        self.token = token
        self.topics = list(topics)
        self.on_update = on_update
        self.last: dict[str, int] = {}
        self.acks: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        options.setdefault("reconnection_delay", 0.5)
        options.setdefault("reconnection_delay_max", 5)
        self.sio = OrderedClient(**options)
        self.sio.on("connect", self._subscribe)
        self.sio.on("disconnect", self._disconnected)
        self.sio.on("token_expiring", self._refresh)
        #: the gateway said the token runs out, and no refresh succeeded since
        self._expiring = False
        for topic in self.topics:
            self.sio.on(topic, self._handler(topic))

    def connect(self, wait_timeout: float = 10) -> None:
        self.sio.connect(self.url, auth=self._auth, transports=["websocket"], wait_timeout=wait_timeout)

    def close(self) -> None:
        self._stopped.set()
        self.sio.disconnect()

    # The token's lifetime.

    def _refresh(self, notice: dict[str, Any] | None = None) -> None:
        """The token runs out soon: send a new one from the token provider (a fixed token cannot be renewed)."""
        self._expiring = True
        if not callable(self.token):
            log.warning("token expiring and no token provider to renew it: the gateway will disconnect at exp")
            return
        self.sio.emit("refresh", {"token": self.token()}, callback=self._refreshed)

    def _refreshed(self, ack: dict[str, Any]) -> None:
        if ack.get("ok"):
            self._expiring = False
            return
        log.warning("token refresh refused: %s", ack)

    def _disconnected(self, reason: Any = None) -> None:
        """After the gateway ended the session because the token ran out, connect again with a new token
        (resuming with ``since``); after a kick, stay disconnected."""
        self.subscribed.clear()
        if reason == socketio.Client.reason.SERVER_DISCONNECT and self._expiring and callable(self.token):
            self._expiring = False
            again = threading.Thread(target=self._connect_again, name="resuming-client-reconnect", daemon=True)
            again.start()

    def _connect_again(self) -> None:
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                self.connect()
                return
            except socketio.exceptions.ConnectionError as exc:
                log.warning("connecting again after the token's end failed (attempt %d): %s", attempt + 1, exc)
                self._stopped.wait(RETRY_SECONDS)
                if self._stopped.is_set():
                    return

    def _auth(self) -> dict[str, str]:
        return {"token": self.token() if callable(self.token) else self.token}

    def _subscribe(self) -> None:
        with self._lock:
            since = dict(self.last)
        self.sio.emit("subscribe", {"topics": self.topics, "since": since}, callback=self._acked)

    def _acked(self, ack: dict[str, Any]) -> None:
        self.acks.append(ack)
        if ack.get("ok"):
            self.subscribed.set()
            return
        log.warning("subscribe refused: %s", ack)
        if ack.get("error") == Code.UNAVAILABLE and self.sio.connected:
            # The gateway's Redis is away: ask again shortly.
            timer = threading.Timer(RETRY_SECONDS, self._subscribe)
            timer.daemon = True
            timer.start()

    def _handler(self, topic: str) -> Callable[[dict[str, Any]], None]:
        def receive(update: dict[str, Any]) -> None:
            seq = update.get("seq")
            if not isinstance(seq, int):
                return
            with self._lock:
                last = self.last.get(topic, 0)
                if not (update.get("snapshot") or seq > last or seq == 1):
                    return
                self.last[topic] = seq
            self.on_update(topic, update)

        return receive
