"""Redis replies parsed without I/O, in whatever pieces they come: as Redis sends them, RESP2 and RESP3."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.resp import ProtocolError, Replies, ReplyError


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def message(kind: bytes, channel: bytes, data: bytes, push: bool = False) -> bytes:
    return (b">3\r\n" if push else b"*3\r\n") + bulk(kind) + bulk(channel) + bulk(data)


def test_pubsub_replies_as_redis_sends_them_over_resp2_and_resp3() -> None:
    replies = Replies()
    replies.feed(
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nq:1\r\n:1\r\n"  # RESP2 confirmation
        + message(b"message", b"q:1", b'{"seq":1}\r\nwith a line break')
        + b">3\r\n$9\r\nsubscribe\r\n$3\r\nq:2\r\n:2\r\n"  # RESP3 push
        + message(b"message", b"q:2", b"", push=True)
        + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n+PONG\r\n"  # a PING in subscribed mode, either way
    )
    assert replies.all() == [
        [b"subscribe", b"q:1", 1],
        [b"message", b"q:1", b'{"seq":1}\r\nwith a line break'],
        [b"subscribe", b"q:2", 2],
        [b"message", b"q:2", b""],
        [b"pong", b""],
        b"PONG",
    ]
    assert replies.buffered == 0


def test_every_kind_of_reply() -> None:
    replies = Replies()
    replies.feed(
        b"-NOPERM no permissions\r\n!5\r\nERR x\r\n:-12\r\n$-1\r\n*-1\r\n_\r\n,3.5\r\n#t\r\n(123\r\n=7\r\ntxt:abc\r\n"
        b"%1\r\n+k\r\n:1\r\n~2\r\n:1\r\n:2\r\n|1\r\n+ttl\r\n:9\r\n+OK\r\n"
    )
    assert replies.all() == [
        ReplyError("NOPERM no permissions"), ReplyError("ERR x"), -12, None, None, None, b"3.5", b"t", b"123",
        b"txt:abc", [b"k", 1], [1, 2], b"OK",
    ]


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=30), max_size=40))
def test_replies_split_anywhere_parse_as_when_whole(cuts: list[int]) -> None:
    data = b"".join(message(b"message", b"u:%d" % n, b'{"seq":%d}' % n * n) for n in range(1, 8))
    replies, found, at = Replies(), [], 0
    for size in [*cuts, len(data)]:
        replies.feed(data[at:at + size])
        at += size
        found += replies.all()
    assert found == [[b"message", b"u:%d" % n, b'{"seq":%d}' % n * n] for n in range(1, 8)]
    assert replies.buffered == 0


@pytest.mark.parametrize("data", [b"?what\r\n", b"$abc\r\n", b"*x\r\n"])
def test_bytes_that_are_no_reply_are_refused(data: bytes) -> None:
    replies = Replies()
    replies.feed(data)
    with pytest.raises(ProtocolError):
        replies.all()
