"""One worker's gateway: its parts, and how it starts and stops.

gunicorn calls :meth:`GatewayWorker.start` from ``post_worker_init`` (after
gevent patched the standard library and the app was built) and
:meth:`GatewayWorker.stop` from ``worker_exit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis
from flask_socketio import SocketIO
from redis.exceptions import RedisError

from gateway.config import Config
from gateway.events import Gateway
from gateway.fanout import FanoutManager
from gateway.subscriptions import Registry

log = logging.getLogger(__name__)


@dataclass
class GatewayWorker:
    config: Config
    redis: redis.Redis
    registry: Registry
    fanout: FanoutManager
    gateway: Gateway
    socketio: SocketIO
    stopped: bool = field(default=False, init=False)

    @property
    def worker_id(self) -> str:
        return self.registry.worker_id

    def start(self) -> None:
        """Start receiving updates now rather than at the first connection."""
        server = self.socketio.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.fanout.initialize()
        log.info("worker started", extra={"worker": self.worker_id})

    def stop(self) -> None:
        """Stop receiving and remove this worker's records; safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        self.fanout.stop()
        try:
            dropped = self.registry.drop_worker(self.worker_id)
        except RedisError:
            log.exception("could not remove this worker's records", extra={"worker": self.worker_id})
            return
        log.info("worker stopped, records of %d connections removed", dropped, extra={"worker": self.worker_id})
