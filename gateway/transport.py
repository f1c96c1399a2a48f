"""What each open connection costs a worker, made smaller.

A worker holds thousands of idle WebSockets; their memory, not their
traffic, is what limits how many fit. Measured with tracemalloc on 2,000
connections, two costs were of the transport layer alone:

- **The read buffer.** gevent's WSGI handler reads each connection through a
  buffered file of 8 KiB (``io.DEFAULT_BUFFER_SIZE``), allocated at accept
  and kept for the connection's life. After the upgrade it only reads
  WebSocket frame headers and client messages, which are small; a larger
  message is read straight through the buffer. :class:`Handler` uses
  :data:`READ_BUFFER_BYTES`.
- **A ping greenlet per connection.** python-engineio starts a greenlet for
  every ping it sends: it sleeps ``ping_interval``, sends, and ends; another
  starts when the pong comes back. That is a greenlet, its saved stack and
  its bookkeeping per connection, all the time. :class:`Pinger` sends every
  connection's pings from one greenlet. Every ping waits the same interval,
  so pings fall due in the order they were scheduled, and a queue in that
  order is the whole timetable.

Ping timeouts are unchanged: python-engineio still checks, on each read and
send, that the client answered within ``ping_timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from engineio import packet as eio_packet
from engineio import socket as eio_socket
from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger(__name__)

#: Bytes of read buffer per connection (gevent's default is 8 KiB).
READ_BUFFER_BYTES = 1024


class Handler(WebSocketHandler):  # type: ignore[misc]
    """gevent-websocket's handler with a read buffer of :data:`READ_BUFFER_BYTES`."""

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)


class Pinger:
    """Sends the Engine.IO pings of every connection of one server, from one greenlet.

    ``install`` makes the server's connections schedule their pings here;
    ``run`` sends each at its time until ``stopping`` is set. A ping is sent
    only to a connection still open, as python-engineio does.
    """

    def __init__(self, eio_server: Any) -> None:
        self.eio = eio_server
        self.interval = float(eio_server.ping_interval)
        #: (monotonic time due, connection), in the order scheduled, which is the order due
        self._due: deque[tuple[float, Any]] = deque()

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
            self._due.append((time.monotonic() + self.interval, connection))

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
            _, connection = self._due.popleft()
            if connection.closing or connection.closed:
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
