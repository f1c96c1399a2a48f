"""One worker's Redis pub/sub connection: the channels it needs, confirmed, and kept through Redis failures.

:class:`Listener` imports no Socket.IO. It listens to Flask-SocketIO's queue
channel, the gateway's control channel (kicks), and the channel of every
user whose connections this worker holds
(:meth:`Listener.watch`), and yields each message (:meth:`Listener.messages`),
telling a :class:`Sink` of each connection:

- a watch returns once Redis confirmed the channel, so that a caller never
  reads history before the user's updates flow to this worker;
- it reads the connection's socket itself (:class:`PubSubReader`), every
  message of one read at once, with a timeout, so that an idle connection is
  health-checked and a stop is seen within :data:`POLL_SECONDS`; redis-py
  connects and sends the commands (its reading of the connection, the
  ``_sock`` and parser buffer it reaches, is checked by the library
  contract test);
- after a Redis failure it reconnects with jittered backoff capped at one
  second, subscribes to every channel again and waits for Redis to confirm
  them all, then lets the sink replay what was missed before reading on;
- ``listening`` (and the ``receiving`` event) tells ``/readyz`` whether
  updates can reach this worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics, protocol
from gateway.redis_client import HEALTH_CHECK_INTERVAL
from gateway.resp import ProtocolError, Replies, ReplyError

log = logging.getLogger(__name__)

#: Seconds a read waits for a message before checking health and stop.
POLL_SECONDS = 1.0
#: Seconds to wait for Redis to confirm a new subscription.
CONFIRM_SECONDS = 5.0
#: Channels subscribed with one command after a reconnect.
SUBSCRIBE_BATCH = 1000
#: Bytes taken off the pub/sub connection in one read.
READ_BYTES = 65536
#: Seconds of silence after which the pub/sub connection is taken for lost: three health-check PINGs' time.
DEAD_SECONDS = 3 * HEALTH_CHECK_INTERVAL


class Sink(Protocol):
    """What the listener tells as it reads: the fan-out."""

    def on_connect(self, again: bool) -> None:
        """Subscribed to every channel (``again``: after a failure); nothing is read until this returns."""

    def on_idle(self, busy: bool) -> float:
        """Called between reads; returns how long the next read may wait (``busy``: a message just came)."""


class PubSubReader:
    """The replies on one redis-py pub/sub connection, read off its socket many at a time.

    redis-py's ``PubSub`` connects, authenticates and sends the commands
    (subscribe, unsubscribe, ping); this reads what Redis sends back, parsed
    by :class:`gateway.resp.Replies`, every whole reply of one read of the
    socket at once. redis-py would parse each through several layers, more
    than ten times the cost of each update's delivery. It also checks the
    connection's health as redis-py's own reading would: a PING after
    ``HEALTH_CHECK_INTERVAL`` seconds of silence, and the connection taken
    for lost after three times that with no answer.
    """

    __slots__ = ("_pubsub", "_sock", "_timeout", "_replies", "_heard", "_pinged")

    def __init__(self, pubsub: Any) -> None:
        connection = pubsub.connection
        if connection._parser._buffer.unread_bytes():  # read by redis-py already: would be lost
            raise RedisConnectionError("the fan-out connection had unread replies at its start")
        self._pubsub = pubsub
        self._sock = connection._sock
        self._timeout = connection.socket_timeout
        self._replies = Replies()
        self._heard = time.monotonic()
        self._pinged = False

    def read(self, wait: float) -> list[Any]:
        """What Redis sent, waiting at most ``wait`` seconds for something; raise ``RedisError`` when the
        connection is lost (or was reconnected under this reader), or at an error reply."""
        connection = self._pubsub.connection
        if connection is None or connection._sock is not self._sock:
            raise RedisConnectionError("the fan-out connection was closed or reconnected")
        self._check_health()
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(READ_BYTES)
        except (TimeoutError, BlockingIOError):
            return []
        except OSError as exc:
            raise RedisConnectionError(f"reading the fan-out connection failed: {exc}") from exc
        finally:
            self._sock.settimeout(self._timeout)
        if not data:
            raise RedisConnectionError("Redis closed the fan-out connection")
        self._heard, self._pinged = time.monotonic(), False
        self._replies.feed(data)
        try:
            replies = self._replies.all()
        except ProtocolError as exc:
            raise RedisConnectionError(str(exc)) from exc
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise ResponseError(reply.message)
        return replies

    def _check_health(self) -> None:
        quiet = time.monotonic() - self._heard
        if quiet > DEAD_SECONDS:
            raise RedisConnectionError(f"Redis answered nothing on the fan-out connection in {quiet:.0f} s")
        if quiet > HEALTH_CHECK_INTERVAL and not self._pinged:
            self._pinged = True
            self._pubsub.ping()


class Listener:
    """The pub/sub connection of one worker, for its fixed ``channels`` (the queue's, control) and the users it
    watches."""

    def __init__(
        self, redis_factory: Callable[[], redis.Redis], channels: tuple[str, ...], user_channel: Callable[[str], str]
    ) -> None:
        self._redis_factory = redis_factory
        self.channels = channels
        self._user_channel = user_channel
        self._stopping = threading.Event()
        self._backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
        self.pubsub: Any = None
        self._reader: Any = None
        #: set while subscribed to every channel, for those who wait on it
        self.receiving = threading.Event()
        #: user -> number of local connections that need the user's channel
        self._watchers: dict[str, int] = {}
        #: user channel -> set once Redis confirmed the subscription
        self._confirmed: dict[str, threading.Event] = {}

    @property
    def listening(self) -> bool:
        return self.receiving.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to finish; it does within ``POLL_SECONDS``."""
        self._stopping.set()

    # Users' channels, counted per local connection.

    def watch(self, user: str) -> None:
        """Receive ``user``'s updates here; return once Redis confirmed it.

        Each call, even one that raises, is given back by exactly one
        :meth:`unwatch`. Raises ``RedisError`` when Redis cannot confirm.
        """
        channel = self._user_channel(user)
        self._watchers[user] = self._watchers.get(user, 0) + 1
        ready = self._confirmed.get(channel)
        if ready is None:
            ready = self._confirmed[channel] = threading.Event()
            if not self.receiving.wait(CONFIRM_SECONDS):
                raise RedisConnectionError("the fan-out listener is not connected to Redis")
            self.pubsub.subscribe(channel)
        if not ready.wait(CONFIRM_SECONDS):
            raise RedisTimeoutError(f"Redis did not confirm {channel}")

    def unwatch(self, user: str) -> None:
        """One local connection of ``user`` no longer needs its channel."""
        count = self._watchers.get(user, 0) - 1
        if count > 0:
            self._watchers[user] = count
            return
        self._watchers.pop(user, None)
        channel = self._user_channel(user)
        self._confirmed.pop(channel, None)
        if self.listening and not self._stopping.is_set():
            try:
                self.pubsub.unsubscribe(channel)
            except RedisError as exc:
                log.debug("unsubscribing %s failed: %s", channel, exc)

    # The loop.

    def messages(self, sink: Sink) -> Iterator[bytes]:
        """Every message of the channels, in the order Redis sent them, until :meth:`stop`.

        Through any number of Redis failures; ``sink`` hears of each
        (re)connection before the next message, and is asked between reads
        how long the next may wait.
        """
        failures = 0
        wait = POLL_SECONDS
        while not self._stopping.is_set():
            try:
                early: list[Any] = []
                if not self.listening:
                    early = self._connect()
                    if failures:
                        log.warning("fan-out listener receiving again after %d failed attempts", failures)
                        metrics.REDIS_RECONNECTS.inc()
                    sink.on_connect(again=failures > 0)
                    failures = 0
                replies = early or self._reader.read(wait)
            except RedisError as exc:
                if failures == 0:
                    log.warning("fan-out listener lost Redis: %s; reconnecting", exc)
                self._close()
                failures += 1
                self._stopping.wait(self._backoff.compute(failures))
                continue
            busy = False
            for reply in replies:
                kind = reply[0] if type(reply) is list and len(reply) == 3 else None
                if kind == b"message":
                    busy = True
                    yield reply[2]
                elif kind == b"subscribe":
                    self._confirm(reply[1])
            wait = sink.on_idle(busy)
        self._close()

    def _connect(self) -> list[Any]:
        """Connect, subscribe to every channel this worker needs, and return once Redis confirmed them all.

        Replaying history before the confirmations would lose what is
        published between the history read and the subscription. Messages
        that arrive meanwhile are returned, to be handled after the replay.
        """
        self.pubsub = self._redis_factory().pubsub()
        channels = [self._user_channel(user) for user in self._watchers]
        self.pubsub.subscribe(*self.channels)
        for start in range(0, len(channels), SUBSCRIBE_BATCH):
            self.pubsub.subscribe(*channels[start:start + SUBSCRIBE_BATCH])
        self._reader = PubSubReader(self.pubsub)
        early: list[Any] = []
        waiting = len(self.channels) + len(channels)
        deadline = time.monotonic() + CONFIRM_SECONDS
        while waiting and time.monotonic() < deadline:
            for reply in self._reader.read(0.1):
                if type(reply) is list and reply[:1] == [b"subscribe"]:
                    waiting -= 1
                    self._confirm(reply[1])
                else:
                    early.append(reply)
        if waiting:
            raise RedisTimeoutError(f"Redis confirmed all but {waiting} subscriptions")
        self.receiving.set()
        return early

    def _confirm(self, channel: bytes) -> None:
        ready = self._confirmed.get(protocol.text(channel))
        if ready is not None:
            ready.set()

    def _close(self) -> None:
        self.receiving.clear()
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except RedisError as exc:
                log.debug("closing the fan-out connection failed: %s", exc)
