"""The connection under the Socket.IO session: the HTTP request and the WebSocket upgrade.

:class:`Handler` is the worker's gevent WSGI handler (gunicorn's
``wsgi_handler``), gevent-websocket's with what the internet requires:

- **the request head has a deadline**: the request line and headers must
  arrive within ``head_seconds`` (``GATEWAY_AUTH_TIMEOUT``, the time a client
  also has for its CONNECT); a half-sent request is closed;
- **the upgrade is the gateway's own**: RFC 6455 version 13 and a valid key,
  then :class:`gateway.websocket.WebSocket`, which judges every frame on its
  header and every message against the Engine.IO grammar;
- **a full worker says so before the upgrade**: 503, so that the load
  balancer tries another machine, while health probes still get in;
- **nothing a client does reaches stderr**: gevent's WSGI server prints
  client resets during a request, bad requests and handler errors to stderr
  by itself; here they are counted (client gone, bad request) and a real
  fault is logged once at ERROR through ``logging``;
- **a small read buffer**: 1 KiB instead of gevent's 8 KiB per connection.

What happens on the session above it (pings, outbound cap, cutting it) is
in :mod:`gateway.engine`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import socketio
from geventwebsocket.handler import WebSocketHandler

from gateway import engine
from gateway.inbound import InboundLimits, engineio_refusal
from gateway.mistakes import client_gone, client_mistake, connect_refused, is_client_gone
from gateway.websocket import WebSocket

log = logging.getLogger(__name__)

#: Bytes of read buffer per connection (gevent's default is 8 KiB).
READ_BUFFER_BYTES = 1024
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HeadTimeout(TimeoutError):
    """A request line or headers did not arrive within ``Handler.head_seconds``."""


#: Why a WebSocket upgrade is refused before it happens (``worker_full``, ``bad_origin``), or None.
Refusal = Callable[[dict[str, Any]], "str | None"]
#: The status each refusal is answered with.
REFUSAL_STATUS = {"worker_full": "503 Service Unavailable", "bad_origin": "400 Bad Request"}


def _none(_environ: dict[str, Any]) -> str | None:
    return None


def upgrade_refusal(server: socketio.Server, websockets: int) -> Refusal:
    """What a worker refuses before a WebSocket upgrade: more than ``websockets`` sessions, or a browser
    origin python-engineio would refuse (it would do so only after the upgrade, with no status to show)."""

    def refusal(environ: dict[str, Any]) -> str | None:
        if engine.session_count(server) >= websockets:
            return "worker_full"
        if engine.origin_refused(server, environ):
            return "bad_origin"
        return None

    return refusal


class Handler(WebSocketHandler):  # type: ignore[misc]
    """gevent-websocket's handler, with the gateway's upgrade, limits and error routing.

    :meth:`configured` makes the subclass a worker installs, bound to its
    inbound limits and to ``refusal``, which says why an upgrade is refused
    before it happens.
    """

    socket: Any
    websocket: WebSocket | None
    limits = InboundLimits.for_messages_of(65536)
    refusal: Refusal = staticmethod(_none)
    head_seconds = 10.0

    @classmethod
    def configured(cls, limits: InboundLimits, refusal: Refusal, head_seconds: float) -> type[Handler]:
        attributes = {"limits": limits, "refusal": staticmethod(refusal), "head_seconds": head_seconds}
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)
        self._served = 0
        self._head_deadline = 0.0

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as exc:  # an error response written to a client that left
            client_gone(exc)

    # The request head, under one deadline.

    def read_requestline(self) -> str:
        self._head_deadline = time.monotonic() + self.head_seconds
        try:
            with gevent.Timeout(self.head_seconds, HeadTimeout):
                line: str = super().read_requestline()
        except HeadTimeout:
            if not self._served:  # an idle keep-alive connection after a request is not a mistake
                client_mistake("header_timeout")
            raise
        self._served += 1
        return line

    def read_request(self, raw_requestline: str) -> bool:
        with gevent.Timeout(max(0.001, self._head_deadline - time.monotonic()), HeadTimeout):
            return bool(super().read_request(raw_requestline))

    # The WebSocket upgrade.

    def upgrade_websocket(self) -> Iterable[bytes] | None:
        """Judge a request that asks for a WebSocket; None leaves any other request to the application.

        A request that names the upgrade but is not a valid one (not a GET,
        no ``Connection: Upgrade``, not HTTP/1.1, cut before its headers
        ended) is answered 400 here: passed on, it would reach python-engineio
        as a WebSocket request without a WebSocket.
        """
        environ = self.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return None
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or "upgrade" not in environ.get("HTTP_CONNECTION", "").lower()
            or self.request_version != "HTTP/1.1"
        ):
            client_mistake("bad_handshake")
            self.start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"invalid WebSocket upgrade\n"]
        refused = self.refusal(environ)
        if refused is not None:
            connect_refused(refused)
            self.start_response(REFUSAL_STATUS[refused], [("Content-Type", "text/plain"), ("Retry-After", "1")])
            return [f"{refused}\n".encode()]
        return self.upgrade_connection()

    def upgrade_connection(self) -> Iterable[bytes] | None:
        """RFC 6455 §4.2: version 13 and a 16-byte key, then the gateway's WebSocket."""
        version = self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")
        if version != "13":
            client_mistake("bad_handshake")
            self.start_response("426 Upgrade Required", [("Sec-WebSocket-Version", "13")])
            return [b"WebSocket version 13 only\n"]
        key = self.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        if not _valid_key(key):
            client_mistake("bad_handshake")
            self.start_response("400 Bad Request", [])
            return [b"invalid Sec-WebSocket-Key\n"]
        self.websocket = WebSocket(self.environ, self.socket, self.rfile, self.limits, engineio_refusal)
        self.environ.update({"wsgi.websocket_version": version, "wsgi.websocket": self.websocket})
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode("latin-1")).digest()).decode("latin-1")
        self.start_response(
            "101 Switching Protocols",
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)],
        )
        return None

    def run_websocket(self) -> None:
        """Run the application on the WebSocket; once it returns, close the WebSocket unless a reader took it.

        A WebSocket handed over to a reader greenlet of its own is closed by
        that reader: this handler, with the request it parsed, ends now, and
        gevent's WSGI server must not close the socket under the reader.
        """
        ws = self.websocket
        try:
            list(self.application(self.environ, _ignore_start_response))
        finally:
            if ws is not None and ws.handed_over:
                self.socket = None
            elif ws is not None and not ws.closed:
                ws.close()
            self.environ["wsgi.websocket"] = None
            self.websocket = None

    # What gevent's WSGI server would print to stderr.

    def handle_error(self, t: type[BaseException], v: BaseException, tb: Any) -> None:
        if is_client_gone(v) or isinstance(v, (ConnectionError, TimeoutError)):
            client_gone(v, path=self.environ.get("PATH_INFO") if self.environ else None)
            self.close_connection = True
            return
        log.error("request failed", exc_info=(t, v, tb), extra={"path": (self.environ or {}).get("PATH_INFO")})
        self._send_error_response_if_possible(500)

    def _handle_client_error(self, ex: BaseException) -> None:
        """An invalid request: counted, answered 400 when the client is still there, closed."""
        if isinstance(ex, HeadTimeout):
            client_mistake("header_timeout")
            return None
        if isinstance(ex, OSError):
            client_gone(ex)
            return None
        client_mistake("bad_request")
        try:
            self.socket.sendall(BAD_REQUEST)
        except OSError as exc:
            client_gone(exc)
        return None

    def log_error(self, msg: str, *args: Any) -> None:
        log.debug(msg, *args)


def _ignore_start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    """The application's response after a WebSocket upgrade: the 101 was sent already, the rest is ignored."""
    return _ignore


def _ignore(_data: bytes) -> None:
    return None


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


class ClientGoneMiddleware:
    """WSGI middleware: a client gone during a request or WebSocket is not an error."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return self.app(environ, start_response)
        except Exception as exc:
            if not is_client_gone(exc):
                raise
            client_gone(exc, path=environ.get("PATH_INFO"))
            return []
