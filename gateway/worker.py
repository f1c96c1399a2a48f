"""One worker's gateway: its parts, and how it starts and stops.

The gateway's gunicorn worker (:mod:`gateway.gunicorn_worker`) calls
:meth:`GatewayWorker.start` as it starts serving (after gevent patched the
standard library and the app was built), and gunicorn's ``worker_exit`` hook
calls :meth:`GatewayWorker.stop`. ``start`` also watches the worker's
``alive`` flag, which the worker class reports the moment gunicorn clears it,
so that SIGTERM, a SIGHUP reload and max-requests recycling all stop the
worker the same way, at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from flask_socketio import SocketIO
from redis.exceptions import RedisError

from gateway import engine
from gateway.config import Config
from gateway.events import Gateway
from gateway.gunicorn_worker import stop_accepting
from gateway.inbound import InboundLimits
from gateway.lease import Heartbeat
from gateway.listener import Listener
from gateway.sessions import SessionGuard
from gateway.subscriptions import Registry
from gateway.transport import Handler, upgrade_refusal
from gateway.websocket import WebSocket

log = logging.getLogger(__name__)

#: Seconds between two looks at gunicorn's ``alive`` flag.
WATCH_SECONDS = 0.1
#: Seconds a starting worker waits for its fan-out listener before serving.
START_SECONDS = 5.0
#: Seconds a second call of stop waits for the first to finish.
STOP_SECONDS = 15.0
#: Connections of a worker kept for plain HTTP when it is full of WebSockets (at most).
HTTP_RESERVE = 100


class Draining:
    """WSGI middleware: once the worker is stopping, it takes nothing new.

    Until gunicorn closes the worker's listener (up to a second later), a
    reconnecting client may still land here: its WebSocket is closed at once
    and plain HTTP (``/readyz``) gets 503, so clients and the load balancer
    retry elsewhere instead of keeping the old worker alive.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], stopping: threading.Event) -> None:
        self.app = app
        self.stopping = stopping

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.stopping.is_set():
            return self.app(environ, start_response)
        ws = environ.get("wsgi.websocket")
        if isinstance(ws, WebSocket):
            # Cut the TCP connection rather than send a close frame: a client
            # waits for the server to end the connection after a close frame,
            # which this worker would do only as it exits.
            ws.abort()
            return []
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
        return [b"worker stopping\n"]


@dataclass
class GatewayWorker:
    config: Config
    redis: redis.Redis
    registry: Registry
    listener: Listener
    gateway: Gateway
    socketio: SocketIO
    heartbeat: Heartbeat
    guard: SessionGuard
    stopping: threading.Event
    stopped: bool = field(default=False, init=False)
    #: set by :meth:`look_now` to have ``alive`` looked at before the next tick
    _look: threading.Event = field(default_factory=threading.Event, init=False)
    #: set once :meth:`stop` finished
    _done: threading.Event = field(default_factory=threading.Event, init=False)

    @property
    def worker_id(self) -> str:
        return self.registry.worker_id

    def start(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Take a lease, receive updates now, and stop when ``alive()`` turns false."""
        self.heartbeat.beat()
        server = self.socketio.server
        engine.start_manager(server)
        pinger = engine.Pinger(server.eio)
        pinger.install()
        self.socketio.start_background_task(pinger.run, self.stopping)
        self.socketio.start_background_task(self.guard.run, self.stopping)
        self.socketio.start_background_task(self.heartbeat.run, self.stopping)
        self.socketio.start_background_task(self.gateway.control.lifetimes.run, self.stopping)
        if self.gateway.verifier.jwks is not None:  # the identity provider's keys, fetched now and kept fresh
            self.socketio.start_background_task(self.gateway.verifier.jwks.run, self.stopping)
        self.socketio.start_background_task(self._watch, alive)
        # Serve only once updates can flow; a Redis that is away delays no
        # more than this, and /readyz tells the load balancer meanwhile.
        if not self.listener.receiving.wait(START_SECONDS):
            log.warning("worker serving before its fan-out listener reached Redis", extra={"worker": self.worker_id})
        log.info("worker started", extra={"worker": self.worker_id})

    def handler_class(self, capacity: int) -> type[Handler]:
        """The WSGI handler for this worker: its inbound limits, and at most ``capacity`` connections.

        A few of the ``capacity`` places stay free for plain HTTP (health
        probes, metrics): a worker full of WebSockets answers a new one 503,
        and the load balancer tries another machine.
        """
        websockets = capacity - max(1, min(HTTP_RESERVE, capacity // 20))
        return Handler.configured(
            InboundLimits.for_messages_of(self.config.max_message_bytes),
            upgrade_refusal(self.socketio.server, websockets),
            head_seconds=self.config.auth_timeout,
        )

    def look_now(self) -> None:
        """Look at ``alive`` at once rather than at the next tick; safe in a signal handler.

        A worker that goes on accepting after a sibling of the same gunicorn
        sent its clients away would take some of them in, only to send them
        away again a moment later.
        """
        self._look.set()

    def _watch(self, alive: Callable[[], bool]) -> None:
        while not self.stopping.is_set():
            self._look.wait(WATCH_SECONDS)
            self._look.clear()
            if not alive():
                self.stop()

    def stop(self) -> None:
        """Stop receiving, send every client away, remove this worker's records.

        Each client's transport is closed without an Engine.IO close packet:
        clients see "transport close" and reconnect at once, to another worker
        or instance (a close packet would read as a deliberate server
        disconnect, after which python-socketio does not reconnect). Safe to
        call twice; never raises.
        """
        if self.stopped:
            # No handler greenlet holds gunicorn's pool open for the connections, so gunicorn may be exiting
            # while the first call still sends clients away: wait for it.
            self._done.wait(STOP_SECONDS)
            return
        self.stopped = True
        try:
            self._stop()
        finally:
            self._done.set()

    def _stop(self) -> None:
        self.stopping.set()
        stop_accepting()
        self.listener.stop()
        self.gateway.worker_stopping = True
        closed = engine.cut_every_session(self.socketio.server)
        try:
            dropped = self.registry.drop_worker(self.worker_id)
        except RedisError:
            log.exception("could not remove this worker's records", extra={"worker": self.worker_id})
            return
        log.info(
            "worker stopped: %d clients sent away, the records of %d connections removed", closed, dropped,
            extra={"worker": self.worker_id},
        )
