"""WebSocket frames (RFC 6455) as a client sends them, without I/O: judged on the header, joined into messages.

:class:`Incoming` is fed the bytes a connection received, in whatever
pieces they came, and gives back whole text messages and control frames.
Each frame's header is judged as soon as it is in, before any of its
payload is waited for: its bits, its declared length against the limit and
the message so far, and its cost against the connection's
:class:`~gateway.inbound.InboundBudget`. What is refused raises
:class:`~gateway.errors.ClientMistake` with the reason, which
:data:`CLOSE_CODES` maps to the close code.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from gateway.errors import ClientMistake
from gateway.inbound import InboundBudget, InboundLimits
from gateway.received import Received

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: The close code of each refusal (RFC 6455 §7.4.1); any other reason closes with 1008, policy violation.
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
#: A control frame: (opcode, payload).
Control = tuple[int, bytes]


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


class Incoming(Received):
    """What one client sent, parsed: whole text messages and control frames, each frame judged on its header.

    At most one frame of the maximum size is ever buffered, and one
    fragmented message of it: its running total is judged on each header.
    ``check`` judges each whole message, returning a refusal reason or None.
    """

    __slots__ = ("_limits", "_budget", "_check", "_header", "_parts", "_total")

    def __init__(self, limits: InboundLimits, check: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self._limits = limits
        self._budget = InboundBudget(limits, time.monotonic())
        self._check = check
        #: the judged header of the frame under way: (fin, opcode, payload size, header size)
        self._header: tuple[bool, int, int, int] | None = None
        #: the fragments of a message under way, and their bytes
        self._parts: list[bytes] | None = None
        self._total = 0

    def next(self) -> str | Control | None:
        """The next whole text message or control frame received; None until one is all in."""
        while (frame := self.next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode >= CLOSE:
                return opcode, payload
            if not fin:
                self._parts = [*(self._parts or ()), payload]
                self._total += len(payload)
                continue
            if self._parts is not None:
                payload = b"".join((*self._parts, payload))
                self._parts, self._total = None, 0
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ClientMistake("invalid_utf8") from None
            if self._check is not None and (reason := self._check(text)) is not None:
                raise ClientMistake(reason)
            return text
        return None

    def next_frame(self) -> tuple[bool, int, bytes] | None:
        """The next whole frame ``(fin, opcode, unmasked payload)``; None until it is all in."""
        buffer, at = self._buffer, self._at
        header = self._header or self._judge(buffer, at)
        if header is None:
            return None
        fin, opcode, size, length = header
        end = at + length + 4 + size
        if len(buffer) < end:
            return None
        key = buffer[at + length:at + length + 4]
        self._header = None
        self._at = end
        if end == len(buffer):
            self._buffer, self._at = b"", 0
        return fin, opcode, unmask(buffer[end - size:end], key) if size else b""

    def _judge(self, buffer: bytes, at: int) -> tuple[bool, int, int, int] | None:
        if len(buffer) - at < 2:
            return None
        fin, opcode, size = judge_header(buffer[at], buffer[at + 1], self._parts is not None)
        length = 2
        if size >= 126:
            length = 4 if size == 126 else 10
            if len(buffer) - at < length:
                return None
            size = int.from_bytes(buffer[at + 2:at + length], "big")
        if self._total + size > self._limits.max_message_bytes:
            raise ClientMistake("frame_too_large")
        if not self._budget.spend(size, time.monotonic()):
            raise ClientMistake("flood")
        self._header = (fin, opcode, size, length)
        return self._header
