"""Where an update is routed: Redis pub/sub to this worker's Socket.IO rooms.

:class:`FanoutManager` is python-socketio's Redis client manager with the
listener replaced:

- it reads with a one-second timeout, so redis-py's health checks run on an
  idle connection and a stop request is seen within a second;
- after a Redis failure it reconnects with jittered backoff capped at one
  second (the library's own listener backs off up to 60 s);
- ``listening`` tells ``/readyz`` whether updates can reach this worker;
- a malformed queue message is logged and skipped, a failing handler is
  logged once with its traceback, and neither stops the listener.

Messages published while the listener is disconnected are not replayed here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import socketio
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from gateway import metrics

log = logging.getLogger(__name__)

#: Seconds a read waits for a message before checking health and stop.
POLL_SECONDS = 1.0


class FanoutManager(socketio.RedisManager):  # type: ignore[misc]
    """Receives the queue channel and emits each message to local rooms."""

    name = "gateway-fanout"

    def __init__(
        self, channel: str, redis_factory: Callable[[], redis.Redis], on_reconnect: Callable[[], None] = lambda: None
    ) -> None:
        super().__init__(url="redis://", channel=channel, logger=log)
        self._redis_factory = redis_factory
        self._on_reconnect = on_reconnect
        self._stopping = threading.Event()
        self._backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
        self.listening = False

    def stop(self) -> None:
        """Ask the listener to finish; it does within ``POLL_SECONDS``."""
        self._stopping.set()

    def _redis_connect(self) -> None:
        self.redis = self._redis_factory()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    def _listen(self) -> Iterator[bytes]:
        channel = self.channel.encode()
        for message in self._redis_listen_with_retries():
            if message["type"] == "message" and message["channel"] == channel:
                yield message["data"]

    def _redis_listen_with_retries(self) -> Iterator[dict[str, Any]]:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self.listening:
                    self._redis_connect()
                    self.pubsub.subscribe(self.channel)
                    self.listening = True
                    if failures:
                        log.warning("fan-out listener receiving again after %d failed attempts", failures)
                        metrics.REDIS_RECONNECTS.inc()
                        self._on_reconnect()
                    failures = 0
                message = self.pubsub.get_message(timeout=POLL_SECONDS)
            except RedisError as exc:
                self._lost(exc, failures)
                failures += 1
                self._stopping.wait(self._backoff.compute(failures))
                continue
            if message is not None:
                yield message
        self._close_pubsub()

    def _lost(self, exc: RedisError, failures: int) -> None:
        if failures == 0:
            log.warning("fan-out listener lost Redis: %s; reconnecting", exc)
        self.listening = False
        self._close_pubsub()

    def _close_pubsub(self) -> None:
        self.listening = False
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except RedisError as exc:
                log.debug("closing the fan-out connection failed: %s", exc)

    def _thread(self) -> None:
        for message in self._listen():
            try:
                data = self.json.loads(message)
            except ValueError:
                log.warning("fan-out skipped a message that is not JSON (%d bytes)", len(message))
                continue
            if isinstance(data, dict):
                self._dispatch(data)

    def _handle_emit(self, message: dict[str, Any]) -> None:
        """Emit to the local room, counting what arrived and what went out."""
        event = str(message.get("event"))
        namespace = message.get("namespace") or "/"
        members = self.rooms.get(namespace, {}).get(message.get("room"), ())
        metrics.UPDATES_RECEIVED.labels(topic=event).inc()
        if not members:
            return
        super()._handle_emit(message)
        metrics.UPDATES_DELIVERED.labels(topic=event).inc(len(members))
        published = _published_at(message.get("data"))
        if published is not None:
            metrics.PUBLISH_TO_SEND.observe(max(0.0, time.time() - published))

    def _dispatch(self, data: dict[str, Any]) -> None:
        method = data.get("method")
        if method == "callback":
            handler = self._handle_callback
        elif data.get("host_id") == self.host_id:
            return
        else:
            handler = {
                "emit": self._handle_emit,
                "disconnect": self._handle_disconnect,
                "enter_room": self._handle_enter_room,
                "leave_room": self._handle_leave_room,
                "close_room": self._handle_close_room,
            }.get(str(method))
        if handler is None:
            log.warning("fan-out skipped a message with method %r", method)
            return
        try:
            handler(data)
        except Exception:
            log.exception("fan-out of a %r message failed", method)


def _published_at(data: object) -> float | None:
    """The ``ts`` of a gateway update (``[{"ts": ...}]``), if it is one."""
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        ts = data[0].get("ts")
        if isinstance(ts, float):
            return ts
    return None
