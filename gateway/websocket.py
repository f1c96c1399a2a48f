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
millisecond. A peer that leaves (EOF, reset, timeout) ends :meth:`receive`
with None, as a close frame does.

Writing never blocks (:class:`Outbox`): a frame the client's socket does not
take at once waits, in order, and is flushed from the hub as the client
reads, so that a sender (the fan-out, for every client of a room) never waits
for one slow client.

Closing is the RFC's handshake: a close frame, then the read side waits at
most :data:`CLOSE_WAIT_SECONDS` for the client's answer before it is shut, so
that a reader blocked on a silent client returns. The TCP connection itself is
closed by gevent's WSGI server once the handler returns.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent import get_hub
from geventwebsocket.exceptions import WebSocketError

from gateway.errors import ClientMistake
from gateway.inbound import InboundBudget, InboundLimits
from gateway.mistakes import client_gone, client_mistake

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Seconds the read side waits for the client's close frame after the gateway sent its own.
CLOSE_WAIT_SECONDS = 5.0
#: The close code of each refusal (RFC 6455 §7.4.1).
CLOSE_CODES = {
    "frame_too_large": 1009,
    "unmasked_frame": 1002,
    "bad_frame": 1002,
    "binary": 1003,
    "invalid_utf8": 1007,
}
POLICY_VIOLATION = 1008
NORMAL = 1000
#: Close codes a client may send besides 3000-4999 (RFC 6455 §7.4); anything else is answered with 1002.
VALID_CLOSE_CODES = frozenset(range(1000, 1012)) - {1004, 1005, 1006}
#: libev's event mask for "the socket can take more".
WRITE = 2


class _Ended(Exception):
    """The peer ended the TCP connection in the middle of a frame."""


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` repeated (RFC 6455 §5.3), in one C-level operation."""
    size = len(payload)
    if not size:
        return payload
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(size, "little")


def frame_header(opcode: int, size: int) -> bytes:
    """The header of an unmasked, final server frame of ``size`` payload bytes."""
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


def judge_header(first: int, second: int, started: bool) -> tuple[bool, int, int]:
    """The first two bytes of a client frame: ``(fin, opcode, length code)``, or raise ``ClientMistake``.

    ``started``: a fragmented message is under way, so only a continuation
    or a control frame may come.
    """
    fin, opcode, size = bool(first & 0x80), first & 0x0F, second & 0x7F
    if first & 0x70 or opcode in (3, 4, 5, 6, 7) or opcode > PONG:
        raise ClientMistake("bad_frame")
    if not second & 0x80:
        raise ClientMistake("unmasked_frame")
    if opcode >= CLOSE:
        if not fin or size > 125:
            raise ClientMistake("bad_frame")
    elif opcode == BINARY:
        raise ClientMistake("binary")
    elif (opcode == TEXT) == started:  # a new message inside a fragmented one, or a continuation of nothing
        raise ClientMistake("bad_frame")
    return fin, opcode, size


def close_code(payload: bytes) -> int:
    """The status code of a client's close frame (§5.5.1, §7.4), or raise ``ClientMistake``."""
    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else NORMAL
    if len(payload) == 1 or not (code in VALID_CLOSE_CODES or 3000 <= code <= 4999):
        raise ClientMistake("bad_frame")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ClientMistake("invalid_utf8") from None
    return code


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


class FrameReader(Handshake):
    """Client frames read off a WebSocket's buffered input, each judged on its header against the limits."""

    __slots__ = ("_rfile", "_limits", "_budget")

    def __init__(self, environ: dict[str, Any], rfile: Any, limits: InboundLimits) -> None:
        super().__init__(environ)
        self._rfile = rfile
        self._limits = limits
        self._budget = InboundBudget(limits, time.monotonic())

    def _frame_header(self, total: int, started: bool) -> tuple[bool, int, int]:
        """Read and judge one frame header, against the limits and the message so far."""
        first, second = self._read(2)
        fin, opcode, size = judge_header(first, second, started)
        if size == 126:
            (size,) = struct.unpack("!H", self._read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read(8))
        if total + size > self._limits.max_message_bytes:
            raise ClientMistake("frame_too_large")
        if not self._budget.spend(size, time.monotonic()):
            raise ClientMistake("flood")
        return fin, opcode, size

    def _payload(self, size: int) -> bytes:
        key = self._read(4)
        return unmask(self._read(size), key) if size else b""

    def _read(self, size: int) -> bytes:
        data: bytes = self._rfile.read(size)
        if len(data) != size:
            raise _Ended
        return data



class WebSocket(FrameReader):
    """One client's WebSocket after the handshake: what python-engineio's gevent driver uses.

    ``receive`` returns the next text message, or None once the connection
    ended (the client left, closed, or was refused); ``send`` writes one text
    frame; ``close`` starts the closing handshake; ``abort`` cuts the TCP
    connection at once (a client that stopped reading). ``check`` judges each
    message before it goes further, returning a refusal reason or None.
    """

    __slots__ = ("closed", "handed_over", "_gone", "_socket", "_check", "_closer", "_outbox")

    def __init__(
        self,
        environ: dict[str, Any],
        sock: Any,
        rfile: Any,
        limits: InboundLimits,
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(environ, rfile, limits)
        self.closed = False
        #: read by a greenlet of its own rather than the WSGI handler's (:meth:`hand_over`)
        self.handed_over = False
        self._gone = False
        self._socket = sock
        self._check = check
        self._closer: Any = None
        self._outbox = Outbox(sock, self._lost)

    def settimeout(self, seconds: float) -> None:
        """Bound every read and write; python-engineio sets ping interval + ping timeout.

        Without it a write to a peer that stopped reading blocks until TCP
        gives up, many minutes later.
        """
        self._socket.settimeout(seconds)

    # Reading.

    def receive(self) -> str | None:
        """The next text message, or None when the connection has ended."""
        if self.closed and self._closer is None:
            return None
        try:
            while (message := self._read_message()) is not None:
                if not self.closed:
                    return message
                # Closing: what the client sends before its close frame is dropped.
        except ClientMistake as exc:
            client_mistake(exc.reason)
            self.close(CLOSE_CODES.get(exc.reason, POLICY_VIOLATION))
        except _Ended:
            pass
        except OSError as exc:
            self._left(exc)
        self._ended()
        return None

    def _read_message(self) -> str | None:
        parts: list[bytes] = []
        total = 0
        while True:
            fin, opcode, size = self._frame_header(total, started=bool(parts))
            if opcode >= CLOSE:
                if self._control(opcode, self._payload(size)):
                    continue
                return None
            total += size
            parts.append(self._payload(size))
            if fin:
                break
        try:
            text = (parts[0] if len(parts) == 1 else b"".join(parts)).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientMistake("invalid_utf8") from None
        if self._check is not None and (reason := self._check(text)) is not None:
            raise ClientMistake(reason)
        return text

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

    # Writing and closing.

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
        self._outbox.then(self._shut_writes)
        self._closer = get_hub().loop.timer(CLOSE_WAIT_SECONDS)
        self._closer.start(self._stop_reading)

    def abort(self) -> None:
        """Cut the TCP connection now: what waits is dropped, a blocked read ends and the buffers are freed."""
        self.closed = True
        self._outbox.stop()
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            return  # already gone

    def hand_over(self) -> None:
        """From now on a reader of its own reads the connection, and :meth:`release` closes it, not the handler."""
        self.handed_over = True

    def release(self) -> None:
        """The reader is done: the socket is closed (nothing more is written), and the handshake's objects go."""
        self._ended()
        self._rfile.close()
        self._socket.close()
        self.environ = {}

    def _shut_writes(self) -> None:
        """Everything up to the close frame was written: no more (runs in the hub, or at once)."""
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            return  # the client is gone already: the reader sees it

    def _lost(self, exc: OSError) -> None:
        """A write found the client gone: counted once, and the connection cut so that the reader ends too."""
        self._left(exc)
        self.abort()

    def _stop_reading(self) -> None:
        """The client did not answer the close frame in time: end the blocked read (runs in the hub)."""
        self._closer = None
        try:
            self._socket.shutdown(socket.SHUT_RD)
        except OSError:
            return  # the connection ended meanwhile

    def _left(self, exc: OSError) -> None:
        """The client is gone: counted once per connection, whether the reader or a writer saw it first."""
        if not self._gone:
            self._gone = True
            client_gone(exc)

    def _ended(self) -> None:
        self.closed = True
        self._outbox.stop()
        if self._closer is not None:
            self._closer.stop()
            self._closer = None
