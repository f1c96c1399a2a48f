"""Client frames parsed without I/O: judged on the header, whatever pieces the bytes come in."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ClientMistake
from gateway.frames import CONTINUATION, PING, Incoming, unmask
from gateway.inbound import InboundLimits
from tests.integration.rawws import frame

LIMIT = 1024


def test_unmask_is_the_rfc_xor() -> None:
    key, data = os.urandom(4), os.urandom(1001)
    assert unmask(data, key) == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert unmask(b"", key) == b""


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_frames_split_anywhere_parse_as_when_whole(cuts: list[int]) -> None:
    data = (frame("40{}") + frame("42[", fin=False) + frame(b"hi", PING) + frame('"' + "a" * 300 + '"', CONTINUATION,
            fin=False) + frame("]", CONTINUATION) + frame("3"))
    incoming = Incoming(InboundLimits.for_messages_of(LIMIT))
    found: list[str | tuple[int, bytes]] = []
    at = 0
    for size in [*cuts, len(data)]:
        incoming.feed(data[at:at + size])
        at += size
        while (item := incoming.next()) is not None:
            found.append(item)
    assert found == ["40{}", (PING, b"hi"), '42["' + "a" * 300 + '"]', "3"]
    assert incoming.buffered == 0


def test_a_header_is_judged_before_its_payload_comes() -> None:
    incoming = Incoming(InboundLimits.for_messages_of(LIMIT))
    incoming.feed(frame(b"x" * 70_000)[:10])  # the header of a frame over the limit, and nothing of it yet
    with pytest.raises(ClientMistake) as refused:
        incoming.next()
    assert refused.value.reason == "frame_too_large"


def test_the_running_total_of_a_fragmented_message_is_judged_on_each_header() -> None:
    incoming = Incoming(InboundLimits.for_messages_of(LIMIT))
    incoming.feed(frame("4" * 600, fin=False) + frame("x" * 600, CONTINUATION)[:4])
    with pytest.raises(ClientMistake) as refused:
        incoming.next()
    assert refused.value.reason == "frame_too_large"


def test_a_check_refuses_a_whole_message() -> None:
    incoming = Incoming(InboundLimits.for_messages_of(LIMIT), check=lambda text: "bad_packet" if text == "x" else None)
    incoming.feed(frame("ok") + frame("x"))
    assert incoming.next() == "ok"
    with pytest.raises(ClientMistake) as refused:
        incoming.next()
    assert refused.value.reason == "bad_packet"
