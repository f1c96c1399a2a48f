"""One worker's gateway: its parts, and how it starts and stops.

gunicorn calls :meth:`GatewayWorker.start` from ``post_worker_init`` (after
gevent patched the standard library and the app was built) and
:meth:`GatewayWorker.stop` from ``worker_exit``. ``start`` also watches the
worker's ``alive`` flag, so that SIGTERM, a SIGHUP reload and max-requests
recycling all stop the worker the same way, within a tenth of a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from flask_socketio import SocketIO
from redis.exceptions import RedisError

from gateway.cleanup import Heartbeat
from gateway.config import Config
from gateway.events import Gateway
from gateway.fanout import FanoutManager
from gateway.subscriptions import Registry

log = logging.getLogger(__name__)

#: Seconds between two looks at gunicorn's ``alive`` flag.
WATCH_SECONDS = 0.1


@dataclass
class GatewayWorker:
    config: Config
    redis: redis.Redis
    registry: Registry
    fanout: FanoutManager
    gateway: Gateway
    socketio: SocketIO
    heartbeat: Heartbeat
    stopping: threading.Event = field(default_factory=threading.Event, init=False)
    stopped: bool = field(default=False, init=False)

    @property
    def worker_id(self) -> str:
        return self.registry.worker_id

    def start(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Take a lease, receive updates now, and stop when ``alive()`` turns false."""
        self.heartbeat.beat()
        server = self.socketio.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.fanout.initialize()
        self.socketio.start_background_task(self.heartbeat.run, self.stopping)
        self.socketio.start_background_task(self._watch, alive)
        log.info("worker started", extra={"worker": self.worker_id})

    def _watch(self, alive: Callable[[], bool]) -> None:
        while not self.stopping.wait(WATCH_SECONDS):
            if not alive():
                self.stop()

    def stop(self) -> None:
        """Stop receiving, send every client away, remove this worker's records.

        Clients are closed at the Engine.IO level ("transport close"), which
        Socket.IO clients answer by reconnecting at once, to another worker
        or instance. Safe to call twice; never raises.
        """
        if self.stopped:
            return
        self.stopped = True
        self.stopping.set()
        self.fanout.stop()
        closed = self._close_clients()
        try:
            dropped = self.registry.drop_worker(self.worker_id)
        except RedisError:
            log.exception("could not remove this worker's records", extra={"worker": self.worker_id})
            return
        log.info(
            "worker stopped: %d clients sent away, %d records left to remove", closed, dropped,
            extra={"worker": self.worker_id},
        )

    def _close_clients(self) -> int:
        sockets = list(self.socketio.server.eio.sockets.values())
        for connection in sockets:
            connection.close(wait=False)
        return len(sockets)
