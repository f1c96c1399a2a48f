"""The gateway's own WebSocket (RFC 6455): every frame judged on its header, before its payload is read.

Every byte a client sends passes here first, before it has authenticated.
What is refused closes the connection with the RFC's close code, is counted
by reason (``gateway_client_errors_total``) and logged at DEBUG:

- a frame whose declared length, or a fragmented message whose running
  total, exceeds ``GATEWAY_MAX_MESSAGE_BYTES``: 1009, before its payload is
  read, so that at most one limit's worth is ever buffered;
- an unmasked client frame (RFC 6455 §5.1), reserved bits, a reserved opcode,
  a fragmented or long control frame, a continuation out of place: 1002;
- a binary frame (the protocol is text only): 1003, on its header;
- text that is not UTF-8: 1007, checked once per message by ``bytes.decode``;
- a connection that sends frames or bytes faster than its
  :class:`~gateway.inbound.InboundBudget` refills, or a message its ``check``
  refuses (an Engine.IO packet a client may not send): 1008.

Unmasking is one XOR of two integers, and decoding one call: both run in C,
so a message of the maximum size costs the event loop well under a
millisecond. A peer that leaves (EOF, reset, timeout) ends the reading, as
a close frame does.

Reading parks nothing per connection (:meth:`WebSocket.start`): once the
session is open, an io watcher waits in the hub until the client sends, and
each burst of input is read and handled by a greenlet that ends with it. An
idle connection is its objects alone; a greenlet's stack is paid only while
a client's message is being handled.

Writing never blocks (:class:`Outbox`): a frame the client's socket does not
take at once waits, in order, and is flushed from the hub as the client
reads, so that a sender (the fan-out, for every client of a room) never waits
for one slow client.

Closing is the RFC's handshake: a close frame, then the read side waits at
most :data:`CLOSE_WAIT_SECONDS` for the client's answer before it is shut, so
that a silent client is not waited for. Once the close frames crossed, the
gateway's side is shut (the client sees the end of the stream at once), and
what the client still sends, up to :data:`LINGER_BYTES`, is read and dropped
until it ends its side, within the same bound; only then is the socket
closed. A socket closed with unread input answers with a reset, which a
proxy in front takes for an error of the gateway's and logs with the
request line, the query string's token included: a client whose writer
thread sends its last packets behind its close frame is normal. A
connection whose reading ended otherwise (the client's end of stream, a
reset, a cut) is closed at once (by gevent's WSGI server when the handler's
greenlet read it).
"""

from __future__ import annotations

import _socket
import enum
import functools
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from gevent import get_hub, spawn_raw
from geventwebsocket.exceptions import WebSocketError
from greenlet import greenlet

from gateway.errors import ClientMistake
from gateway.frames import (
    BINARY,
    CLOSE,
    CLOSE_CODES,
    NORMAL,
    PING,
    POLICY_VIOLATION,
    PONG,
    TEXT,
    Incoming,
    close_code,
    frame_header,
)
from gateway.inbound import InboundLimits
from gateway.mistakes import client_gone, client_mistake

log = logging.getLogger(__name__)

#: Seconds the read side waits for the client's close frame after the gateway sent its own.
CLOSE_WAIT_SECONDS = 5.0
#: libev's event masks for "the socket has something to read" and "the socket can take more".
READ, WRITE = 1, 2
#: Bytes a client may still send after the closing handshake, read and dropped, before the socket is closed anyway.
LINGER_BYTES = 65536
#: Bytes taken off a client's socket in one read.
READ_CHUNK = 16384


class _Wait(enum.Enum):
    """What the reading of a message says while it is not all in yet."""

    MORE = 0


_MORE = _Wait.MORE


class RawSocket(_socket.socket):
    """A client's socket once its WebSocket is read from the hub: the operating system's, non-blocking.

    It takes the file descriptor away from gevent's socket object, which the
    WSGI server closes when the handler returns, and costs no watcher of its
    own. ``send`` takes the ``timeout`` argument of gevent's, which it
    ignores: it never waits.
    """

    __slots__ = ()

    @classmethod
    def taken_from(cls, sock: Any, rfile: Any) -> tuple[RawSocket, bytes]:
        """The connection of gevent's ``sock``, and what its buffered reader ``rfile`` held already."""
        sock.settimeout(0.0)
        held = rfile.read1(READ_CHUNK)  # what is buffered, or one read that does not wait
        rfile.close()
        raw = cls(fileno=sock.detach())
        raw.setblocking(False)
        return raw, held

    def send(self, data: Any, flags: int = 0, timeout: float | None = None) -> int:
        return super().send(data, flags)

    def drop(self) -> int | None:
        """Read and drop what the client sent (never waiting): how many bytes; None once its side ended."""
        try:
            data = self.recv(READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        return len(data) or None


class Outbox:
    """What the gateway writes to one client, never blocking the writer.

    A frame is written at once when the client's socket takes it. What it
    does not take waits here, in order, and a write watcher flushes it from
    the hub as the client reads; a sender never waits for a slow client, and
    ``pending`` tells how far behind it is (the outbound cap reads it).
    """

    __slots__ = ("_socket", "_queue", "_watcher", "_then", "_lost")

    def __init__(self, sock: Any, lost: Callable[[OSError], None]) -> None:
        self._socket = sock
        self._lost = lost
        self._queue: deque[memoryview] | None = None
        self._watcher: Any = None
        self._then: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Frames (or parts of one) written but not yet taken by the client's socket."""
        return len(self._queue) if self._queue else 0

    def write(self, data: bytes) -> None:
        """Write ``data`` after what waits; raise ``OSError`` when the client is gone."""
        if self._queue:
            self._queue.append(memoryview(data))
            return
        try:
            sent = self._socket.send(data, 0, 0.0)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._queue = deque([memoryview(data)[sent:]])
            self._watcher = get_hub().loop.io(self._socket.fileno(), WRITE)
            self._watcher.start(self._flush)

    def rebind(self, sock: Any) -> None:
        """Write through ``sock`` from now on: the same connection, under another socket object."""
        self._socket = sock

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything written so far is taken (at once when nothing waits)."""
        if self._queue:
            self._then = action
        else:
            action()

    def stop(self) -> None:
        """Drop what waits; nothing more is written (the connection ends)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._queue = None
        self._then = None

    def _flush(self) -> None:
        """The socket takes more (runs in the hub: nothing here may block)."""
        queue = self._queue
        try:
            while queue:
                head = queue[0]
                sent = self._socket.send(head, 0, 0.0)
                if sent < len(head):
                    queue[0] = head[sent:]
                    return
                queue.popleft()
        except BlockingIOError:
            return
        except OSError as exc:
            self.stop()
            self._lost(exc)
            return
        then = self._then
        self.stop()
        if then is not None:
            then()


class Handshake:
    """What python-engineio's gevent driver reads of a WebSocket: facts of its HTTP handshake."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    @property
    def version(self) -> str | None:
        return self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")

    @property
    def path(self) -> str | None:
        return self.environ.get("PATH_INFO")

    @property
    def origin(self) -> str | None:
        return self.environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> str | None:
        return self.environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")


class Receiver(Protocol):
    """What a WebSocket read from the hub (:meth:`WebSocket.start`) hands what it reads to."""

    def received(self, message: str) -> bool:
        """One text message from the client; False to read no more."""

    def ended(self) -> None:
        """The reading ended (the client left or closed, or was refused); the socket closes after it (see
        :meth:`WebSocket.lingers`)."""


class HubReader:
    """Reads one WebSocket from the hub, so that nothing waits for a client that sends nothing.

    An io watcher waits in the hub until the client sends. Then a greenlet
    of its own takes what came, hands each whole message to the receiver
    (which may wait, on Redis for instance) and ends, and the watcher waits
    again; a connection's messages are handled one at a time, in order. Once
    the reading ends the receiver is told, then the socket is closed.
    """

    __slots__ = ("_ws", "_receiver", "_socket", "_watcher", "_dropped")

    def __init__(self, ws: WebSocket, receiver: Receiver, sock: RawSocket) -> None:
        self._ws = ws
        self._receiver = receiver
        self._socket = sock
        self._watcher: Any = get_hub().loop.io(sock.fileno(), READ)
        self._dropped = 0

    def start(self, now: bool) -> None:
        """Wait for the client; ``now``: read what was received already first."""
        if now:
            spawn_raw(self._burst)
        else:
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        """The client sent something (runs in the hub: nothing here may block)."""
        self._watcher.stop()
        greenlet(self._burst, get_hub()).switch()

    def _burst(self) -> None:
        """Take what came, hand each whole message on, then wait in the hub again; or end."""
        ws = self._ws
        linger = False
        try:
            if ws.fill() is not None:
                while (message := ws.take()) is not _MORE:
                    if message is None or not self._receiver.received(message):
                        break
                else:
                    if not ws.finished:
                        self._watcher.start(self._readable)
                        return
                linger = True  # the connection is still up: the client may still send
        except Exception:  # a fault of the gateway's: logged once, and this connection ends
            log.exception("reading a WebSocket failed")
        self._end(linger)

    def _end(self, linger: bool) -> None:
        try:
            self._receiver.ended()
        finally:
            if linger and self._ws.lingers():
                self._watcher.start(self._drain)
            else:
                self._ws.release()

    def _drain(self) -> None:
        """After the closing handshake: drop what the client still sends until it ends its side (runs in the hub)."""
        dropped = self._socket.drop()
        if dropped is not None:
            self._dropped += dropped
            if self._dropped <= LINGER_BYTES:
                return
        self._watcher.stop()
        self._ws.release()


class WebSocket(Handshake):
    """One client's WebSocket after the handshake: what python-engineio's gevent driver uses.

    Read from the hub once :meth:`start` ran (:class:`HubReader`), with no
    greenlet parked for it; or by ``receive``, which waits for the next text
    message, None once the connection ended (python-engineio's own driver,
    for a session upgraded from long-polling). ``send`` writes one text
    frame; ``close`` starts the closing handshake; ``abort`` cuts the TCP
    connection at once. ``check`` judges each message, returning a refusal
    reason or None.
    """

    __slots__ = ("closed", "handed_over", "_gone", "_socket", "_rfile", "_incoming", "_closer", "_outbox", "_reader")

    def __init__(self, environ: dict[str, Any], sock: Any, rfile: Any, limits: InboundLimits,
                 check: Callable[[str], str | None] | None = None) -> None:
        super().__init__(environ)
        self.closed = False
        #: read from the hub (:meth:`start`) rather than by the WSGI handler's greenlet
        self.handed_over = False
        self._gone = False
        self._socket = sock
        #: the handshake's buffered input, read until the WebSocket is read from the hub
        self._rfile = rfile
        self._incoming = Incoming(limits, check)
        self._closer: Any = None
        self._outbox = Outbox(sock, self._lost)
        self._reader: HubReader | None = None  # once read from the hub

    def settimeout(self, seconds: float) -> None:
        """Bound every wait of :meth:`receive`; python-engineio's driver sets ping interval + ping timeout."""
        self._socket.settimeout(seconds)

    @property
    def finished(self) -> bool:
        """Nothing more is read: the connection ended, or the gateway closed it and waits for no answer."""
        return self.closed and self._closer is None

    def start(self, receiver: Receiver) -> None:
        """From now on, read from the hub and hand every message to ``receiver``; the socket is closed after.

        What the handshake's buffer held already (a client may send its first
        frames right behind the upgrade request) is read first.
        """
        self.handed_over = True
        self.environ = {}
        self._socket, pipelined = RawSocket.taken_from(self._socket, self._rfile)
        self._rfile = None
        self._outbox.rebind(self._socket)
        self._reader = HubReader(self, receiver, self._socket)
        self._incoming.feed(pipelined)
        self._reader.start(now=bool(pipelined))

    def receive(self) -> str | None:
        """The next text message, waiting for it; None when the connection has ended."""
        while (message := self.take()) is _MORE:
            if self.fill() is None:
                self._ended()
                return None
        if message is None:
            self._ended()
        return message

    def fill(self) -> bool | None:
        """Take what the client sent: True when bytes came, False when none had (read from the hub), None once
        the connection ended (end of stream, reset, a timeout of :meth:`receive`)."""
        try:
            data = self._socket.recv(READ_CHUNK) if self._rfile is None else self._rfile.read1(READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._left(exc)
            return None
        if not data:
            return None
        self._incoming.feed(data)
        return True

    def take(self) -> str | None | _Wait:
        """The next text message of what was received; ``_MORE`` until one is all in; None once the connection
        ends (a close frame, or a refusal, which is counted and closes with its code)."""
        if self.finished:
            return None
        try:
            while (item := self._incoming.next()) is not None:
                if not isinstance(item, str):
                    if self._control(*item):
                        continue
                    return None
                if not self.closed:
                    return item
                # Closing: what the client sends before its close frame is dropped.
        except ClientMistake as exc:
            client_mistake(exc.reason)
            self.close(CLOSE_CODES.get(exc.reason, POLICY_VIOLATION))
            return None
        return _MORE

    def _control(self, opcode: int, payload: bytes) -> bool:
        """Answer a control frame; False once it was a close."""
        if opcode == PING:
            if not self.closed:
                self._send_frame(PONG, payload)
            return True
        if opcode == PONG:
            return True
        self.close(close_code(payload))
        return False

    def send(self, message: str | bytes, binary: bool | None = None) -> None:
        """Write one message without waiting; a client gone is counted and raised as ``WebSocketError``."""
        if self.closed:
            raise WebSocketError("Connection is already closed")
        data = message.encode() if isinstance(message, str) else bytes(message)
        binary = not isinstance(message, str) if binary is None else binary
        if not self._send_frame(BINARY if binary else TEXT, data):
            raise WebSocketError("Socket is dead")

    def send_nowait(self, message: str) -> None:
        """Write one text message without waiting, from any greenlet; once the client is gone, nothing."""
        if not self.closed:
            self._send_frame(TEXT, message.encode())

    @property
    def pending(self) -> int:
        """Frames written that the client's socket has not taken yet."""
        return self._outbox.pending

    def _send_frame(self, opcode: int, data: bytes) -> bool:
        """Write one frame after what waits; False when the client is gone (counted, and the connection cut)."""
        try:
            self._outbox.write(frame_header(opcode, len(data)) + data)
        except OSError as exc:
            self._lost(exc)
            return False
        return True

    def close(self, code: int = NORMAL, message: bytes = b"") -> None:
        """Send a close frame; the read side ends with the client's answer, or after ``CLOSE_WAIT_SECONDS``."""
        if self.closed:
            return
        self.closed = True
        if not self._send_frame(CLOSE, struct.pack("!H", code) + message):
            return  # the client is gone already: the reader sees it
        self._outbox.then(functools.partial(self._shut, socket.SHUT_WR))  # all up to the close frame written
        self._closer = get_hub().loop.timer(CLOSE_WAIT_SECONDS)
        self._closer.start(self._stop_reading)

    def lingers(self) -> bool:
        """Whether its reading done, the socket waits for the client to end its side (after a close frame)."""
        return self.closed and not self._gone and self._closer is not None

    def abort(self) -> None:
        """Cut the TCP connection now: what waits is dropped, a blocked read ends and the buffers are freed."""
        self.closed = True
        self._outbox.stop()
        self._shut(socket.SHUT_RDWR)

    def release(self) -> None:
        """The reading from the hub is done: the socket is closed, and nothing more is written."""
        self._ended()
        self._reader = None
        loop, sock = get_hub().loop, self._socket
        if loop.closing_fd(sock.fileno()):  # as gevent's own close: a watcher still on the fd is woken first
            loop.run_callback(sock.close)
        else:
            sock.close()

    def _shut(self, how: int) -> None:
        """Shut one side of the connection, or both (may run in the hub); a client gone already is no matter."""
        try:
            self._socket.shutdown(how)
        except OSError:
            return  # the reading sees it

    def _lost(self, exc: OSError) -> None:
        """A write found the client gone: counted once, and the connection cut so that the reader ends too."""
        self._left(exc)
        self.abort()

    def _stop_reading(self) -> None:
        """The client did not answer the close frame in time: end the blocked read (runs in the hub)."""
        self._closer = None
        self._shut(socket.SHUT_RD)

    def _left(self, exc: OSError) -> None:
        """The client is gone: counted once per connection, whether the reader or a writer saw it first."""
        if not self._gone:
            self._gone = True
            client_gone(exc)

    def _ended(self) -> None:
        self.closed = True
        self._outbox.stop()
        closer, self._closer = self._closer, None
        if closer is not None:
            closer.stop()
