"""Bytes received from a peer and not yet parsed: what the gateway's parsers without I/O read from.

A parser (:class:`gateway.frames.Incoming` for a client's WebSocket frames,
:class:`gateway.resp.Replies` for Redis replies) is fed whatever one read of
its socket brought, in whatever pieces, and takes whole units from
``_buffer`` starting at ``_at``; what is not whole yet waits for the next
``feed``. The unparsed rest is copied only when more bytes come.
"""

from __future__ import annotations


class Received:
    """The bytes fed so far and not yet taken: ``_buffer`` from ``_at`` on."""

    __slots__ = ("_buffer", "_at")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return len(self._buffer) - self._at

    def feed(self, data: bytes) -> None:
        """Bytes read from the peer, after those before."""
        if self._at < len(self._buffer):
            self._buffer = self._buffer[self._at:] + data
        else:
            self._buffer = data
        self._at = 0
