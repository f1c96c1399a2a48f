"""Every reach of the gateway into python-engineio and python-socketio beyond their documented API.

The rest of the gateway goes through this module to find, send to, cap and
end the sessions of its Socket.IO server; each reach is named here with why
it is needed, and ``tests/unit/test_library_contract.py`` checks that the
pinned versions still have it:

- :class:`EngineConnections`: a room's clients read from the manager's
  ``rooms[namespace][room] = {sid: eio_sid}``; packets are sent with
  python-engineio's public ``Server.send_packet``;
- :class:`DirectSocket` and :class:`Driver`: a session served without
  python-engineio's writer greenlet and queue. The driver replaces the
  ``websocket`` entry of ``Server._async``; the session's class becomes
  ``DirectSocket``, which overrides ``Socket.send`` and ``Socket.close`` and
  reads the WebSocket itself;
- :class:`OutboundLimit`: what waits for a session's client (its WebSocket's
  outbox, or ``Socket.queue`` for a session upgraded from long-polling);
- :func:`cut_session` and :func:`close_session`: ``Server.sockets`` and
  ``Socket.close(wait, abort, reason)``, and the WebSocket python-socketio
  keeps in ``Server.environ``;
- :class:`Pinger`: ``Socket.schedule_ping`` and ``Socket.last_ping``, which
  python-engineio has no option for;
- :func:`take_handlers`: ``Server.handlers``, ``async_handlers`` and
  ``log_message_keys`` of python-engineio;
- :func:`origin_refused`: python-engineio's own origin check,
  ``Server._cors_allowed_origins``;
- :func:`start_manager`: python-socketio's ``manager_initialized`` flag;
- :func:`keep_slim_environs`: python-socketio's ``Server.environ``, set item
  by item as sessions open.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from engineio.async_drivers import gevent as eio_gevent

from gateway import metrics
from gateway.inbound import NAMESPACE
from gateway.websocket import WebSocket

log = logging.getLogger(__name__)

_NOBODY: Mapping[str, str] = {}
_LIBRARY_DRIVER = eio_gevent.WebSocketWSGI


class EngineConnections:
    """The clients in the rooms of a client manager, as the fan-out reaches them (:class:`gateway.fanout.Connections`).

    The manager's server is the one it was given to (``set_server``).
    """

    __slots__ = ("manager",)

    def __init__(self, manager: socketio.Manager) -> None:
        self.manager = manager

    @property
    def server(self) -> socketio.Server:
        return self.manager.server

    def members(self, room: str | None) -> Mapping[str, str]:
        rooms: Mapping[str | None, Mapping[str, str]] = self.manager.rooms.get(NAMESPACE, _NOBODY)
        return rooms.get(room, _NOBODY)

    def send(self, eio_sid: str, packet: eio_packet.Packet) -> None:
        self.manager.server.eio.send_packet(eio_sid, packet)


class OutboundLimit:
    """Connections whose every send is capped: a session with ``limit`` packets queued is cut instead.

    A client that stops reading while updates keep coming would grow its
    queue without bound. At ``limit`` queued packets the connection is cut:
    its records are removed by the disconnect handler, its TCP connection is
    shut so that its buffers are freed at once, and it is counted as
    ``gateway_send_failures_total{reason="slow_client"}``. The client
    reconnects and resubscribes like after any network loss.
    """

    __slots__ = ("connections", "limit")

    def __init__(self, connections: EngineConnections, limit: int) -> None:
        self.connections = connections
        self.limit = limit

    def members(self, room: str | None) -> Mapping[str, str]:
        return self.connections.members(room)

    def send(self, eio_sid: str, packet: eio_packet.Packet) -> None:
        server = self.connections.server
        session = server.eio.sockets.get(eio_sid)
        if session is not None and backlog(session) >= self.limit:
            if not (session.closing or session.closed):
                metrics.SEND_FAILURES.labels(reason="slow_client").inc()
                log.info("client cut off: %d packets queued and unread", self.limit, extra={"sid": eio_sid})
                cut_session(server, eio_sid)
            return
        self.connections.send(eio_sid, packet)


class _NoQueue:
    """Stands for the Engine.IO queue of a session that has none: nothing waits in it."""

    __slots__ = ()

    def qsize(self) -> int:
        return 0


_NO_QUEUE = _NoQueue()


class DirectSocket(eio_socket.Socket):  # type: ignore[misc]
    """A python-engineio session over the gateway's WebSocket, with no writer greenlet and no queue.

    python-engineio queues every packet and runs a greenlet per connection
    that waits on the queue and writes; here a packet is written by the
    greenlet that sends it (the fan-out's, for updates), through the
    WebSocket's :class:`gateway.websocket.Outbox`, which never blocks. The
    session's class becomes this one as its WebSocket opens (:class:`Driver`).
    """

    transport: WebSocket
    closed: bool
    closing: bool
    queue: Any

    def send(self, pkt: eio_packet.Packet) -> None:
        if self.check_ping_timeout():  # raises when closed, as python-engineio's
            self.transport.send_nowait(pkt.encode())

    def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.closed or self.closing:
            return
        self.closing = True
        self.server._trigger_event("disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT,
                                   run_async=False)
        if not abort:
            self.transport.send_nowait(eio_packet.Packet(eio_packet.CLOSE).encode())
        self.closed = True
        self.transport.close()

    def take(self, ws: WebSocket) -> None:
        """Become the session of ``ws``: what waited in the queue is written, and ``ws`` is read from the hub.

        No greenlet waits for the client: the WSGI handler's, with the whole
        HTTP request under it, ends now, and each burst of the client's input
        is handled by a greenlet that ends with it (:meth:`WebSocket.start`).
        """
        self.transport = ws
        self.connected = self.upgraded = True
        queued, self.queue = self.queue, _NO_QUEUE
        while not queued.empty():  # the OPEN packet, sent before the upgrade
            pkt = queued.get_nowait()
            if pkt is not None:
                ws.send_nowait(pkt.encode())
        ws.start(self)

    def received(self, message: str) -> bool:
        """One Engine.IO packet from the client, handled as python-engineio's own reader would; False to stop."""
        try:
            self.receive(eio_packet.Packet(encoded_packet=message))
        except eio_exceptions.UnknownPacketError:
            return True
        except eio_exceptions.SocketIsClosedError:
            return False
        except Exception:
            self.server.logger.exception("receive failed")  # as python-engineio's own reader does
            return False
        return True  # a session closed now still reads its client's close frame

    def ended(self) -> None:
        """The client's WebSocket ended: so does the session (once), and the server forgets it."""
        self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        self.server.sockets.pop(self.sid, None)


class Driver:
    """python-engineio's ``websocket`` driver for the gateway's WebSocket: the session becomes a :class:`DirectSocket`.

    A session that upgrades from long-polling (one worker, polling allowed)
    keeps python-engineio's own driver and writer.
    """

    def __init__(self, handler: Callable[[Any], Any], server: Any) -> None:
        self.handler = handler
        self.server = server

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        ws = environ.get("wsgi.websocket")
        session = self.handler.__self__  # type: ignore[attr-defined]
        if not isinstance(ws, WebSocket) or session.connected:
            return _LIBRARY_DRIVER(self.handler, self.server)(environ, start_response)
        session.__class__ = DirectSocket
        session.take(ws)
        return []


def send_directly(server: socketio.Server) -> None:
    """Serve every WebSocket session of ``server`` with :class:`DirectSocket` (a copy of its drivers, not theirs)."""
    eio = server.eio
    eio._async = {**eio._async, "websocket": Driver}


def backlog(session: Any) -> int:
    """Packets sent to a session that its client has not taken yet."""
    if isinstance(session, DirectSocket):
        return session.transport.pending
    return int(session.queue.qsize())


def session_count(server: socketio.Server) -> int:
    """Engine.IO sessions open on ``server``."""
    return len(server.eio.sockets)


def forget_closed(server: socketio.Server) -> int:
    """Remove the sessions that closed from ``server``'s table; return how many.

    python-engineio does the same in its service task, but only as that
    task's slow walk reaches them (one session per ping timeout divided by
    the number of sessions): a session closed before its WebSocket was ever
    read would be held, and counted, for up to a minute.
    """
    closed = [sid for sid, session in list(server.eio.sockets.items()) if session.closed]
    for sid in closed:
        server.eio.sockets.pop(sid, None)
    return len(closed)


def close_session(server: socketio.Server, eio_sid: str) -> None:
    """End a session politely: what is queued, then Engine.IO's CLOSE, then the WebSocket close."""
    session = server.eio.sockets.get(eio_sid)
    if session is not None:
        session.close(wait=False, abort=False, reason=server.eio.reason.SERVER_DISCONNECT)


def cut_session(server: socketio.Server, eio_sid: str, code: int | None = None) -> None:
    """End one session of a Socket.IO ``server`` now, whatever it has queued.

    The Engine.IO session is closed without a close packet (the client sees
    a transport close and reconnects), then the WebSocket: with a close frame
    of ``code`` (a protocol violation), or, with no code, by cutting the TCP
    connection, so that a client that no longer reads or answers is not
    waited for.
    """
    ws = server.environ.get(eio_sid, {}).get("wsgi.websocket")
    if isinstance(ws, WebSocket):  # first: the session's close would close it with 1000
        if code is None:
            ws.abort()
        else:
            ws.close(code)
    session = server.eio.sockets.get(eio_sid)
    if session is not None:
        session.close(wait=False, abort=True, reason=server.eio.reason.SERVER_DISCONNECT)


def cut_every_session(server: socketio.Server) -> int:
    """Cut every session of ``server`` (a worker that stops); return how many there were."""
    sessions = list(server.eio.sockets)
    for eio_sid in sessions:
        cut_session(server, eio_sid)
    return len(sessions)


def socketio_session_count(server: socketio.Server) -> int:
    """Clients connected to the Socket.IO namespace (authenticated) on ``server``."""
    return len(server.manager.rooms.get(NAMESPACE, _NOBODY).get(None, _NOBODY))


def origin_refused(server: socketio.Server, environ: dict[str, Any]) -> bool:
    """Whether python-engineio would refuse this request's browser origin (it would, only after the upgrade)."""
    origin = environ.get("HTTP_ORIGIN")
    eio = server.eio
    if not origin or eio.cors_allowed_origins == []:
        return False
    allowed = eio._cors_allowed_origins(environ)
    return allowed is not None and origin not in allowed


class _Forgetful(set[str]):
    """python-engineio logs a kind of client error at ERROR once, then at INFO; this makes every one an ERROR,
    so that :class:`gateway.mistakes.LibraryLog` counts each."""

    def add(self, _key: str) -> None:
        return None


def take_handlers(server: socketio.Server, own: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Put ``own`` Engine.IO handlers in front of python-socketio's and return its, by event.

    Every message of a connection is handled in its reader, one at a time
    (``async_handlers`` off in both libraries), and every client error
    python-engineio logs is logged at the same level.
    """
    server.async_handlers = False
    eio = server.eio
    eio.async_handlers = False
    eio.log_message_keys = _Forgetful()
    theirs = {}
    for event, handler in own.items():
        theirs[event] = eio.handlers[event]
        eio.on(event, handler)
    return theirs


#: What Flask, Werkzeug and the gateway's handlers read of a session's environ once its WebSocket is open.
KEPT_ENVIRON = frozenset({
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
    "REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "HTTP_ORIGIN", "HTTP_AUTHORIZATION", "flask.app", "wsgi.websocket",
})


class SlimEnvirons(dict[str, dict[str, Any]]):
    """python-socketio's environ of each session, keeping only :data:`KEPT_ENVIRON` of what it is given.

    python-socketio keeps a copy of every session's WSGI environ for as long
    as the session lives: every header, the WSGI input stream and what the
    server put there. Only what the handlers read is kept.
    """

    def __setitem__(self, eio_sid: str, environ: dict[str, Any]) -> None:
        super().__setitem__(eio_sid, {key: value for key, value in environ.items() if key in KEPT_ENVIRON})


def keep_slim_environs(server: socketio.Server) -> None:
    """Have ``server`` keep :class:`SlimEnvirons` (python-socketio's ``Server.environ``)."""
    server.environ = SlimEnvirons(server.environ)


def start_manager(server: socketio.Server) -> None:
    """Start the client manager now (python-socketio would on the first connection), once."""
    if not server.manager_initialized:
        server.manager_initialized = True
        server.manager.initialize()


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
