"""The unparsed rest of what a peer sent: kept across feeds, and copied only when more comes."""

from __future__ import annotations

from gateway.received import Received


class Lines(Received):
    """A parser of newline-ended lines, on the bytes received."""

    __slots__ = ()

    def lines(self) -> list[bytes]:
        found = []
        while (end := self._buffer.find(b"\n", self._at)) >= 0:
            found.append(self._buffer[self._at:end])
            self._at = end + 1
        return found


def test_what_is_not_whole_yet_waits_for_the_next_feed() -> None:
    lines = Lines()
    lines.feed(b"one\ntw")
    assert lines.lines() == [b"one"] and lines.buffered == 2
    lines.feed(b"o\nthree\n")
    assert lines.lines() == [b"two", b"three"] and lines.buffered == 0
    data = b"four\n"
    lines.feed(data)
    assert lines._buffer is data, "nothing left over: the new bytes are taken as they are, not copied"
