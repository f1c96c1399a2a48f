"""What a client may send, judged without I/O: budgets, Engine.IO and Socket.IO grammar, the library logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway import metrics
from gateway.errors import ClientMistake
from gateway.inbound import (
    FRAME_BURST,
    MIN_BYTE_BURST,
    InboundBudget,
    InboundLimits,
    engineio_refusal,
    socketio_refusal,
)
from gateway.mistakes import LibraryLog, library_reason
from gateway.sessions import StrictPacket

CORPUS = json.loads((Path(__file__).parents[1] / "hostile_packets.json").read_text())


def client_errors(reason: str) -> float:
    return metrics.CLIENT_ERRORS.labels(reason=reason)._value.get()


# Budgets.


def test_limits_let_two_largest_messages_through_at_once() -> None:
    limits = InboundLimits.for_messages_of(1_000_000)
    assert limits.byte_burst == 2_000_000
    assert limits.bytes_per_second == 250_000
    small = InboundLimits.for_messages_of(1024)
    assert small.byte_burst == MIN_BYTE_BURST


def test_budget_allows_a_burst_then_refuses_until_it_refills() -> None:
    budget = InboundBudget(InboundLimits.for_messages_of(1024), now=0.0)
    assert all(budget.spend(10, now=0.0) for _ in range(FRAME_BURST))
    assert not budget.spend(10, now=0.0)
    budget = InboundBudget(InboundLimits.for_messages_of(1024), now=0.0)
    for _ in range(FRAME_BURST):
        budget.spend(10, now=0.0)
    assert budget.spend(10, now=1.0)  # 20 frames refilled in a second


def test_budget_counts_bytes_as_well_as_frames() -> None:
    limits = InboundLimits.for_messages_of(1024)
    budget = InboundBudget(limits, now=0.0)
    assert budget.spend(int(limits.byte_burst), now=0.0)
    assert not budget.spend(1, now=0.0)


def test_a_steady_honest_client_is_never_cut() -> None:
    budget = InboundBudget(InboundLimits.for_messages_of(1024), now=0.0)
    # a pong every 25 s and a subscribe now and then, for a day
    assert all(budget.spend(200, now=t * 0.5) for t in range(172_800))


def test_a_clock_going_back_refills_nothing() -> None:
    budget = InboundBudget(InboundLimits(1024, frame_burst=1, frames_per_second=1, byte_burst=1e9, bytes_per_second=1),
                           now=10.0)
    assert budget.spend(1, now=10.0)
    assert not budget.spend(1, now=5.0)


# Engine.IO packets from a client.


@pytest.mark.parametrize("message", ["40", '40{"token":"x"}', "41", '42["subscribe",{}]', "2probe", "3", "3probe", "5",
                                     "6", "1"])
def test_engineio_packets_a_client_sends_go_on(message: str) -> None:
    assert engineio_refusal(message) is None


@pytest.mark.parametrize("message", ["", "4", "4x", "4\u0664", "0", "2", "2probeprobe", "7", "x" * 10_000, "6" * 20,
                                     '{"sid":"x"}'])
def test_other_engineio_packets_are_refused(message: str) -> None:
    assert engineio_refusal(message) == "bad_packet"


def test_base64_binary_is_refused_as_binary() -> None:
    assert engineio_refusal("bAQID") == "binary"


# Socket.IO packets from a client.


@pytest.mark.parametrize("case", CORPUS["socketio_refused"], ids=lambda c: repr(c["packet"][:24]))
def test_malformed_socketio_packets_are_a_client_mistake(case: dict[str, str]) -> None:
    with pytest.raises(ClientMistake) as raised:
        StrictPacket(encoded_packet=case["packet"])
    assert raised.value.reason == case["reason"]


@pytest.mark.parametrize("packet", CORPUS["socketio_accepted"])
def test_well_formed_socketio_packets_decode(packet: str) -> None:
    decoded = StrictPacket(encoded_packet=packet)
    assert decoded.namespace in (None, "/")


def test_an_empty_socketio_packet_is_refused() -> None:
    with pytest.raises(ClientMistake):
        StrictPacket(encoded_packet="")


def test_bytes_are_binary() -> None:
    with pytest.raises(ClientMistake) as raised:
        StrictPacket(encoded_packet=b"2[]")
    assert raised.value.reason == "binary"


def test_the_gateway_still_encodes_its_own_packets() -> None:
    encoded = StrictPacket(packet_type=2, data=["balance", {"seq": 1}]).encode()
    assert encoded == '2["balance",{"seq":1}]'


@pytest.mark.parametrize(("packet_type", "namespace", "data", "reason"), [
    (0, None, None, None),
    (0, "/", {"token": "x"}, None),
    (0, None, "token", "bad_packet"),
    (1, None, None, None),
    (1, None, {}, "bad_packet"),
    (2, None, ["x"], None),
    (2, None, [], "bad_packet"),
    (2, None, [1], "bad_packet"),
    (2, "/other", ["x"], "bad_packet"),
    (3, None, [], "bad_packet"),
    (4, None, {}, "bad_packet"),
    (5, None, ["x"], "binary"),
    (2, None, ["x"], "binary"),
])
def test_socketio_refusal(packet_type: int, namespace: str | None, data: object, reason: str | None) -> None:
    attachments = 1 if (packet_type, reason) == (2, "binary") else 0
    assert socketio_refusal(packet_type, namespace, data, attachments) == reason


# What the libraries log about clients.


@pytest.mark.parametrize(("message", "reason"), [
    ("Invalid transport", "bad_transport"),
    ("Invalid websocket upgrade", "bad_handshake"),
    ("Invalid session abc", "bad_session"),
    ("sid abc is not connected to namespace /", "not_connected"),
    ("Unknown callback received, ignoring.", "bad_packet"),
    ("Redis is down", None),
])
def test_library_messages_are_sorted(message: str, reason: str | None) -> None:
    assert library_reason(message) == reason


def test_library_errors_about_clients_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    before = client_errors("bad_transport")
    with caplog.at_level(logging.DEBUG, logger="engineio.server"):
        LibraryLog("engineio.server").error("Invalid transport")
    assert client_errors("bad_transport") == before + 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_refused_origin_is_counted_as_a_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    counter = metrics.CONNECT_REFUSED.labels(reason="bad_origin")
    before = counter._value.get()
    LibraryLog("engineio.server").error("https://evil.example is not an accepted origin.")
    assert counter._value.get() == before + 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_other_library_errors_pass_on_at_their_level(caplog: pytest.LogCaptureFixture) -> None:
    # the library's own logger: python-socketio sets it to ERROR when a server is made with no log handler
    with caplog.at_level(logging.INFO, logger="socketio.server"):
        LibraryLog("socketio.server").warning("queue %s unreachable", "redis")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("socketio.server", logging.WARNING, "queue redis unreachable")]


def test_a_library_traceback_about_a_client_is_a_count(caplog: pytest.LogCaptureFixture) -> None:
    before = client_errors("bad_packet")
    gone = metrics.SEND_FAILURES.labels(reason="client_gone")
    gone_before = gone._value.get()
    library = LibraryLog("engineio.server")
    try:
        raise ClientMistake("bad_packet")
    except ClientMistake:
        library.exception("message handler error")
    try:
        raise BrokenPipeError
    except BrokenPipeError:
        library.exception("message handler error")
    assert client_errors("bad_packet") == before + 1
    assert gone._value.get() == gone_before + 1
    assert caplog.records == []


def test_a_real_fault_is_logged_once_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("registry")
    except KeyError:
        LibraryLog("engineio.server").exception("message handler error")
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_library_info_is_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="engineio.server"):
        LibraryLog("engineio.server").info("%s: Sending packet %s", "sid", "MESSAGE")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
