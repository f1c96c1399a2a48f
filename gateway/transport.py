"""The connection under the Socket.IO session: HTTP request, WebSocket upgrade, pings, outbound cap.

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

:class:`Pinger` sends every connection's Engine.IO pings from one greenlet
instead of one per ping, and :class:`OutboundLimit` cuts a client whose
outbound queue fills up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from geventwebsocket.handler import WebSocketHandler

from gateway import metrics
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


def upgrade_refusal(eio: Any, websockets: int) -> Refusal:
    """What a worker refuses before a WebSocket upgrade: more than ``websockets`` sessions, or a browser
    origin python-engineio would refuse (it would do so only after the upgrade, with no status to show)."""

    def refusal(environ: dict[str, Any]) -> str | None:
        if len(eio.sockets) >= websockets:
            return "worker_full"
        origin = environ.get("HTTP_ORIGIN")
        if origin and eio.cors_allowed_origins != []:
            allowed = eio._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                return "bad_origin"
        return None

    return refusal


class Handler(WebSocketHandler):  # type: ignore[misc]
    """gevent-websocket's handler, with the gateway's upgrade, limits and error routing.

    :meth:`configured` makes the subclass a worker installs, bound to its
    inbound limits and to ``refusal``, which says why an upgrade is refused
    before it happens.
    """

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


class OutboundLimit:
    """Caps the packets queued for one connection.

    A client that stops reading while updates keep coming would grow its
    queue without bound. At ``limit`` queued packets the connection is cut:
    its records are removed by the disconnect handler, its TCP connection is
    shut so that its buffers are freed at once, and it is counted as
    ``gateway_send_failures_total{reason="slow_client"}``. The client
    reconnects and resubscribes like after any network loss.

    Installed in place of the Socket.IO server's packet send, the one place
    every outbound packet of the worker passes.
    """

    def __init__(self, server: Any, limit: int) -> None:
        self.server = server
        self.limit = limit
        self._send = server._send_eio_packet
        server._send_eio_packet = self

    def __call__(self, eio_sid: str, packet: Any) -> None:
        connection = self.server.eio.sockets.get(eio_sid)
        if connection is not None and connection.queue.qsize() >= self.limit:
            self._cut(eio_sid, connection)
            return
        self._send(eio_sid, packet)

    def _cut(self, eio_sid: str, connection: Any) -> None:
        if connection.closing or connection.closed:
            return
        metrics.SEND_FAILURES.labels(reason="slow_client").inc()
        log.info("client cut off: %d packets queued and unread", self.limit, extra={"sid": eio_sid})
        cut_session(self.server, eio_sid)


def cut_session(server: Any, eio_sid: str, code: int | None = None) -> None:
    """End one session of a Socket.IO ``server`` now, whatever it has queued.

    The Engine.IO session is closed without a close packet (the client sees
    a transport close and reconnects), then the WebSocket: with a close frame
    of ``code`` (a protocol violation), or, with no code, by cutting the TCP
    connection, so that a client that no longer reads or answers is not
    waited for.
    """
    ws = server.environ.get(eio_sid, {}).get("wsgi.websocket")
    session = server.eio.sockets.get(eio_sid)
    if session is not None:
        session.close(wait=False, abort=True, reason=server.eio.reason.SERVER_DISCONNECT)
    if isinstance(ws, WebSocket):
        if code is None:
            ws.abort()
        else:
            ws.close(code)


class Pinger:
    """Sends the Engine.IO pings of every connection of one server, from one greenlet.

    python-engineio starts a greenlet for every ping it sends: it sleeps
    ``ping_interval``, sends, and ends. Here ``install`` makes the server's
    connections schedule their pings on one timetable, and ``run`` sends each
    at its time until ``stopping`` is set. Every ping waits the same interval,
    so pings fall due in the order they were scheduled, and a queue in that
    order is the whole timetable. A ping is sent only to a connection still
    open; ping timeouts are python-engineio's, unchanged. The timetable holds
    connections weakly: one that ended is freed at once, not a ping interval
    later (under churn, that would be every connection of the last 25 s).
    """

    def __init__(self, eio_server: Any) -> None:
        self.eio = eio_server
        self.interval = float(eio_server.ping_interval)
        #: (monotonic time due, connection), in the order scheduled, which is the order due
        self._due: deque[tuple[float, weakref.ref[Any]]] = deque()

    def install(self) -> None:
        """Route ``schedule_ping`` of this server's connections here; others keep their own."""
        original = eio_socket.Socket.schedule_ping
        pinger = self

        def schedule_ping(connection: Any) -> None:
            if connection.server is pinger.eio:
                pinger.schedule(connection)
            else:
                original(connection)

        eio_socket.Socket.schedule_ping = schedule_ping

    def schedule(self, connection: Any) -> None:
        # As python-engineio: only once the previous ping was sent (a pong
        # that arrives twice must not schedule two pings).
        if connection.last_ping:
            connection.last_ping = None
            self._due.append((time.monotonic() + self.interval, weakref.ref(connection)))

    def run(self, stopping: threading.Event) -> None:
        """Send pings as they fall due; return once ``stopping`` is set."""
        while not stopping.is_set():
            self.send_due(time.monotonic())
            wait = self._due[0][0] - time.monotonic() if self._due else self.interval
            stopping.wait(max(0.0, wait))

    def send_due(self, now: float) -> int:
        """Ping every connection due by ``now``; return how many were pinged."""
        sent = 0
        while self._due and self._due[0][0] <= now:
            _, held = self._due.popleft()
            connection = held()
            if connection is None or connection.closing or connection.closed:
                continue
            connection.last_ping = time.time()
            try:
                connection.send(eio_packet.Packet(eio_packet.PING))
            except Exception:
                # One connection's fault must not stop every other connection's pings.
                log.exception("sending a ping failed", extra={"sid": getattr(connection, "sid", None)})
                continue
            sent += 1
        return sent

    @property
    def waiting(self) -> int:
        """Connections with a ping scheduled."""
        return len(self._due)
