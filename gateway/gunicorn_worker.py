"""The gateway's gunicorn worker: gevent-websocket's, with the gateway's handler, its servers, and a prompt stop.

``worker_class = "gateway.gunicorn_worker.Worker"`` (gunicorn.conf.py). It is
gunicorn's ``GeventWebSocketWorker``, extended through gunicorn's own class
hooks instead of patches made from configuration hooks:

- ``wsgi_handler``: the handler of :mod:`gateway.transport`, bound to this
  worker's limits and connection cap, set before gunicorn builds its servers;
- ``server_class``: gunicorn's pywsgi server, recorded in :data:`SERVERS` as
  it is made, so that a stopping worker stops accepting at once
  (:func:`stop_accepting`) without looking for servers gunicorn keeps no
  reference to;
- ``init_process``: gevent keeps no spawn tree per greenlet;
- ``alive``: gunicorn clears it on SIGTERM, SIGQUIT, SIGINT, a reload or a
  parent that went away; the gateway is told at that moment, so that every
  worker of the instance sends its clients away at once instead of after
  ``graceful_timeout``.
"""

from __future__ import annotations

import weakref
from typing import Any

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from gunicorn.workers.ggevent import PyWSGIServer

#: The gevent servers of this process's worker (one per listening socket).
SERVERS: weakref.WeakSet[PyWSGIServer] = weakref.WeakSet()


class TrackedServer(PyWSGIServer):  # type: ignore[misc]
    """gunicorn's pywsgi server, recorded in :data:`SERVERS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        SERVERS.add(self)


def stop_accepting() -> None:
    """Stop this process's servers from accepting new connections now.

    gunicorn does the same up to a second later; until then a reconnecting
    client could land on this stopping worker. Pending connections stay in
    the shared listen queue for the other workers.
    """
    for server in list(SERVERS):
        server.stop_accepting()


class Worker(GeventWebSocketWorker):  # type: ignore[misc]
    """gunicorn's gevent-websocket worker, serving the gateway's app."""

    server_class = TrackedServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gateway: Any = None
        super().__init__(*args, **kwargs)

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        # Set in signal handlers too: the gateway's look_now only sets an event.
        self._alive = value
        if not value and self._gateway is not None:
            self._gateway.look_now()

    def init_process(self) -> None:
        # gevent records, for every greenlet, the stack that spawned it (for its debugging tools): kilobytes
        # per greenlet the gateway has no use for.
        gevent.config.track_greenlet_tree = False
        super().init_process()

    def run(self) -> None:
        """Start the gateway (lease, listener, the watch on ``alive``), then serve as gunicorn does."""
        gateway = self.wsgi.extensions["gateway"]
        self.wsgi_handler = gateway.handler_class(self.worker_connections)
        self._gateway = gateway
        gateway.start(alive=lambda: self.alive)
        super().run()
