"""Where a connection ends: client-gone detection and record removal.

A client that goes away while the gateway writes to it is normal. The
exceptions that say so are listed here, once; they are counted in
``gateway_send_failures_total{reason="client_gone"}``, logged at DEBUG at
most, and never reach the log as a traceback. Everything else propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from geventwebsocket.exceptions import WebSocketError
from redis.exceptions import RedisError

from gateway import metrics
from gateway.subscriptions import Registry

log = logging.getLogger(__name__)

#: The exceptions that mean "the peer is gone", and nothing else.
CLIENT_GONE: tuple[type[BaseException], ...] = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    WebSocketError,
)
#: What Werkzeug and gevent's WSGI server raise when a response is written
#: after its client went away before the status line was sent.
WRITE_BEFORE_START = "write() before start_response"


def is_client_gone(exc: BaseException) -> bool:
    if isinstance(exc, CLIENT_GONE):
        return True
    return isinstance(exc, AssertionError) and WRITE_BEFORE_START in str(exc)


def client_gone(exc: BaseException, **context: Any) -> None:
    """Count a write to a departed client: one DEBUG line, no traceback."""
    metrics.SEND_FAILURES.labels(reason="client_gone").inc()
    log.debug("client gone: %s", exc.__class__.__name__, extra=context)


class _GuardedWebSocket:
    """A gevent-websocket socket whose failed sends are counted, then re-raised.

    Engine.IO's writer stops on the re-raised error and closes the
    connection, which runs the disconnect handler.
    """

    __slots__ = ("_ws",)

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def send(self, message: Any, binary: bool | None = None) -> Any:
        try:
            return self._ws.send(message, binary)
        except CLIENT_GONE as exc:
            client_gone(exc)
            raise


class ClientGoneMiddleware:
    """WSGI middleware: a client gone during a request or WebSocket is not an error."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            environ["wsgi.websocket"] = _GuardedWebSocket(ws)
        try:
            return self.app(environ, start_response)
        except Exception as exc:
            if not is_client_gone(exc):
                raise
            client_gone(exc, path=environ.get("PATH_INFO"))
            return []


def release_connection(registry: Registry, sid: str, **context: Any) -> None:
    """Remove every record of a closed connection; never raises.

    A Redis failure here is logged once at ERROR with its traceback: the
    records stay until the worker's lease sweep or ``gateway sweep``.
    """
    try:
        removed = registry.release(sid)
    except RedisError:
        log.exception("could not remove the records of a closed connection", extra={"sid": sid, **context})
        return
    log.debug("connection closed, %d topics released", len(removed), extra={"sid": sid, **context})
