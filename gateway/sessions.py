"""What every Engine.IO session of a worker is held to, from its opening to its CONNECT and after.

:class:`SessionGuard` is hooked into python-engineio through its public
``on()`` handlers, around python-socketio's own:

- **one message at a time**: a connection's messages are handled in its
  reader, in order, one after another; no greenlet is started per event, so
  a connection's backlog is what TCP holds, and a flood is cut by the
  WebSocket's budget (``gateway.websocket``);
- **authenticate in time**: a session without a valid Socket.IO CONNECT is
  closed after ``GATEWAY_AUTH_TIMEOUT`` (``auth_timeout``); at most
  :data:`MAX_UNAUTHENTICATED` wait at once, and past that the oldest is
  closed (``pending_evicted``): an honest client authenticates within a
  round trip, so it is the one that stays;
- **a refused CONNECT ends the session**: the client gets ``connect_error``
  with the reason; a client library then disconnects by itself, and a
  session still open :data:`REFUSED_GRACE_SECONDS` later is closed, leaving
  nothing behind;
- **a packet the protocol does not allow ends the session**: binary data, a
  malformed Socket.IO packet (:class:`StrictPacket`), an event before the
  CONNECT. Each is counted by reason, never logged as a traceback.

The guard also reports what sessions the worker holds (``gateway_sessions``)
every :data:`REPORT_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import socketio
from socketio import packet as sio_packet

from gateway import engine, metrics
from gateway.errors import ClientMistake
from gateway.frames import POLICY_VIOLATION
from gateway.inbound import NAMESPACE, socketio_refusal
from gateway.mistakes import client_mistake

log = logging.getLogger(__name__)

#: Sessions of one worker that may wait for their CONNECT at once.
MAX_UNAUTHENTICATED = 2000
#: Seconds between two reports of the sessions held, and most a deadline may pass unseen.
REPORT_SECONDS = 1.0
#: Seconds a session refused at CONNECT has to leave by itself before it is closed. Closing it at
#: once races python-engineio's client, which is disconnecting too, and then waits 90 s for its writer.
REFUSED_GRACE_SECONDS = 1.0


class StrictPacket(sio_packet.Packet):  # type: ignore[misc]
    """python-socketio's packet (its documented ``serializer`` extension), decoding only what a client may send.

    A malformed packet raises :class:`ClientMistake` before python-socketio
    acts on it, instead of the ``ValueError``, ``TypeError`` or ``IndexError``
    it would raise half-way through.
    """

    def __init__(self, *args: Any, encoded_packet: Any = None, **kwargs: Any) -> None:
        if encoded_packet is not None and not encoded_packet:
            raise ClientMistake("bad_packet")  # python-socketio would take an empty packet for an event
        super().__init__(*args, encoded_packet=encoded_packet, **kwargs)

    def decode(self, encoded_packet: Any) -> int:
        if not isinstance(encoded_packet, str):
            raise ClientMistake("binary")
        try:
            attachments = int(super().decode(encoded_packet) or 0)
        except (ValueError, TypeError, IndexError, RecursionError):
            raise ClientMistake("bad_packet") from None
        reason = socketio_refusal(self.packet_type, self.namespace, self.data, attachments)
        if reason is not None:
            raise ClientMistake(reason)
        return attachments


class SessionGuard:
    """The Engine.IO sessions of one Socket.IO server, held to the protocol and to a deadline to authenticate."""

    def __init__(self, server: socketio.Server, auth_timeout: float, max_unauthenticated: int = MAX_UNAUTHENTICATED):
        self.server = server
        self.auth_timeout = auth_timeout
        self.max_unauthenticated = max_unauthenticated
        #: eio sid -> monotonic deadline of its CONNECT, oldest first (every deadline is as long)
        self.unauthenticated: dict[str, float] = {}
        #: eio sid -> when a session refused at CONNECT is closed, oldest first (every grace is as long)
        self.refused: dict[str, float] = {}
        self._handlers: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        """Handle each connection's messages in order in its reader, and wrap python-socketio's handlers."""
        own = {"connect": self._connect, "message": self._message, "disconnect": self._disconnect}
        self._handlers = engine.take_handlers(self.server, own)

    # Around python-socketio's handlers.

    def _connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        while len(self.unauthenticated) >= self.max_unauthenticated:
            oldest = next(iter(self.unauthenticated))
            client_mistake("pending_evicted", sid=oldest)
            self.close(oldest)
        self.unauthenticated[eio_sid] = time.monotonic() + self.auth_timeout
        return self._handlers["connect"](eio_sid, environ)

    def _message(self, eio_sid: str, data: Any) -> None:
        waiting = eio_sid in self.unauthenticated
        kind = data[:1] if isinstance(data, str) else ""
        try:
            if not isinstance(data, str):
                raise ClientMistake("binary")
            if waiting and kind != "0":
                raise ClientMistake("not_connected")
            self._handlers["message"](eio_sid, data)
        except ClientMistake as exc:
            client_mistake(exc.reason, sid=eio_sid)
            self.cut(eio_sid)
            return
        if kind in ("0", "1"):
            self._after_connect_or_disconnect(eio_sid, refused=kind == "0")

    def _after_connect_or_disconnect(self, eio_sid: str, refused: bool) -> None:
        self.refused.pop(eio_sid, None)
        if self.authenticated(eio_sid):
            self.unauthenticated.pop(eio_sid, None)
        elif refused:
            self.refused[eio_sid] = time.monotonic() + REFUSED_GRACE_SECONDS
        else:  # the client left the namespace: it may CONNECT again, in time (last in line, as the newest)
            self.unauthenticated.pop(eio_sid, None)
            self.unauthenticated[eio_sid] = time.monotonic() + self.auth_timeout

    def _disconnect(self, eio_sid: str, reason: Any = None) -> Any:
        self.unauthenticated.pop(eio_sid, None)
        self.refused.pop(eio_sid, None)
        return self._handlers["disconnect"](eio_sid, reason)

    def authenticated(self, eio_sid: str) -> bool:
        sid = self.server.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        return sid is not None and bool(self.server.manager.is_connected(sid, NAMESPACE))

    # Ending sessions.

    def close(self, eio_sid: str) -> None:
        """End a session politely: what is queued, then Engine.IO's CLOSE, then the WebSocket close."""
        self.unauthenticated.pop(eio_sid, None)
        self.refused.pop(eio_sid, None)
        engine.close_session(self.server, eio_sid)

    def cut(self, eio_sid: str) -> None:
        """End a session that broke the protocol: nothing more is sent but a close frame (1008)."""
        self.unauthenticated.pop(eio_sid, None)
        self.refused.pop(eio_sid, None)
        engine.cut_session(self.server, eio_sid, POLICY_VIOLATION)

    # The deadline to authenticate, and the report.

    def run(self, stopping: threading.Event) -> None:
        """Close sessions past their deadline and report the sessions held, until ``stopping`` is set."""
        while not stopping.is_set():
            self.expire(time.monotonic())
            self.report()
            stopping.wait(REPORT_SECONDS)

    def expire(self, now: float) -> int:
        """Close every session refused, or not authenticated in time, by ``now``; return how many."""
        for eio_sid in _due(self.refused, now):
            self.close(eio_sid)  # counted when it was refused
        expired = _due(self.unauthenticated, now)
        for eio_sid in expired:
            client_mistake("auth_timeout", sid=eio_sid)
            self.close(eio_sid)
        return len(expired)

    def report(self) -> None:
        engine.forget_closed(self.server)
        metrics.SESSIONS.labels(state="engineio").set(engine.session_count(self.server))
        metrics.SESSIONS.labels(state="unauthenticated").set(len(self.unauthenticated))
        metrics.SESSIONS.labels(state="socketio").set(engine.socketio_session_count(self.server))


def _due(deadlines: dict[str, float], now: float) -> list[str]:
    """The sessions whose deadline passed by ``now``; deadlines are in the order they were set."""
    due = []
    for eio_sid, deadline in deadlines.items():
        if deadline > now:
            break
        due.append(eio_sid)
    return due
