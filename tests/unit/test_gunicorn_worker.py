"""The gateway's gunicorn worker class: its servers recorded, its gateway told when gunicorn clears alive."""

from __future__ import annotations

import inspect
import socket

from gunicorn.workers.base import Worker as GunicornWorker
from gunicorn.workers.ggevent import GeventWorker

from gateway.gunicorn_worker import SERVERS, TrackedServer, Worker, stop_accepting


class StandInGateway:
    def __init__(self) -> None:
        self.looked = 0

    def look_now(self) -> None:
        self.looked += 1


def test_clearing_alive_tells_the_gateway_at_once() -> None:
    worker = Worker.__new__(Worker)
    worker._gateway = None
    worker.alive = True  # as gunicorn's Worker.__init__ does, before the app is loaded
    gateway = StandInGateway()
    worker._gateway = gateway
    worker.alive = True
    assert gateway.looked == 0
    worker.handle_exit(15, None)  # gunicorn's SIGTERM handler
    assert worker.alive is False and gateway.looked == 1


def test_a_server_is_recorded_and_stops_accepting() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        server = TrackedServer(listener, application=lambda environ, start_response: [])
        assert server in SERVERS
        server.start()
        assert server._watcher is not None  # gevent's accept watcher
        stop_accepting()
        assert server._watcher is None
    finally:
        listener.close()


def test_gunicorn_still_builds_its_servers_from_the_class_hooks() -> None:
    """The library contract the worker class relies on: run() reads server_class and wsgi_handler, and
    handle_exit clears alive."""
    source = inspect.getsource(GeventWorker.run)
    assert "self.server_class(" in source and "handler_class=self.wsgi_handler" in source
    assert "self.alive = False" in inspect.getsource(GunicornWorker.handle_exit)
