"""Redis replies (RESP2 and RESP3) parsed without I/O: the fan-out listener's reading of its pub/sub connection.

Every update a worker delivers first arrives as one pub/sub message on the
listener's connection. redis-py parses each one through several layers
(retry wrapper, readiness check, push handling, message dispatch), about
30 microseconds a message on this machine; :class:`Replies` is fed whatever
one read of the socket brought and parses every whole reply in it, about
2.5 microseconds a message.

Values: a bulk or simple string is ``bytes``; an integer ``int``; an array,
a set or a push is a ``list``; a map a ``list`` of its keys and values in
turn; a null ``None``; an error a :class:`ReplyError`; a double, a boolean
or a big number its text, as ``bytes``. An attribute (RESP3 ``|``) is read
and dropped with the reply it comes with.
"""

from __future__ import annotations

from typing import Any

from gateway.received import Received


class ReplyError:
    """An error reply (``-ERR ...`` or a blob error): its text."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ReplyError({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyError) and other.message == self.message

    __hash__ = None  # type: ignore[assignment]


class ProtocolError(ValueError):
    """Bytes that are no Redis reply."""


class _Short(Exception):
    """The reply under way is not all in yet."""


_CRLF = b"\r\n"
_AGGREGATES = {ord("*"): 1, ord(">"): 1, ord("~"): 1, ord("%"): 2, ord("|"): 2}
_BLOBS = frozenset(map(ord, "$=!"))
_LINES = frozenset(map(ord, ",#("))
_NOT_IN_YET = object()


class Replies(Received):
    """The replies one Redis connection sent, from the bytes read off it in whatever pieces they came."""

    __slots__ = ()

    def all(self) -> list[Any]:
        """Every whole reply received so far, in order; what is not all in yet waits for more bytes."""
        found = []
        while (reply := self._next()) is not _NOT_IN_YET:
            found.append(reply)
        return found

    def _next(self) -> Any:
        if self._at >= len(self._buffer):
            return _NOT_IN_YET
        try:
            reply, self._at = self._parse(self._at)
        except _Short:
            return _NOT_IN_YET
        return reply

    def _parse(self, at: int) -> tuple[Any, int]:
        buffer = self._buffer
        end = buffer.find(_CRLF, at)
        if end < 0:
            raise _Short
        kind = buffer[at]
        if kind in _BLOBS:
            size = self._size(at + 1, end)
            if size < 0:
                return None, end + 2
            start, stop = end + 2, end + 2 + size
            if len(buffer) < stop + 2:
                raise _Short
            blob = buffer[start:stop]
            return (ReplyError(blob.decode(errors="replace")) if kind == 0x21 else blob), stop + 2  # "!"
        if kind in _AGGREGATES:
            count = self._size(at + 1, end)
            at = end + 2
            if count < 0:
                return None, at
            items = []
            for _ in range(count * _AGGREGATES[kind]):
                item, at = self._parse(at)
                items.append(item)
            if kind == 0x7C:  # "|": an attribute, then the reply it describes
                return self._parse(at)
            return items, at
        line = buffer[at + 1:end]
        if kind == 0x3A:  # ":"
            return self._size(at + 1, end), end + 2
        if kind == 0x2B or kind in _LINES:  # "+", and doubles, booleans, big numbers as text
            return line, end + 2
        if kind == 0x2D:  # "-"
            return ReplyError(line.decode(errors="replace")), end + 2
        if kind == 0x5F and not line:  # "_"
            return None, end + 2
        raise ProtocolError(f"not a Redis reply: {buffer[at:end + 2][:40]!r}")

    def _size(self, start: int, end: int) -> int:
        try:
            return int(self._buffer[start:end])
        except ValueError:
            raise ProtocolError(f"not a Redis length: {self._buffer[start:end][:20]!r}") from None
