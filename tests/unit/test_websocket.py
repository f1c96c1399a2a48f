"""The gateway's WebSocket reader on bytes held in memory: every rule judged on the frame header."""

from __future__ import annotations

import gc
import io
import socket
import struct
from typing import Any

import gevent
import gevent.socket
import pytest
from greenlet import greenlet
from prometheus_client import REGISTRY

from gateway import websocket
from gateway.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, frame_header
from gateway.inbound import InboundLimits
from gateway.websocket import READ_CHUNK, Outbox, WebSocket
from tests.integration.rawws import frame  # the raw client's frames: masked, or not, as a test says

LIMIT = 1024


class Peer:
    """Stands in for the client's socket: what the gateway writes, and whether it shut the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.shut: list[int] = []

    def send(self, data: bytes, flags: int = 0, timeout: float | None = None) -> int:
        assert timeout == 0.0, "the gateway never waits on a write"
        self.written += data
        return len(data)

    def shutdown(self, how: int) -> None:
        self.shut.append(how)

    def settimeout(self, seconds: float) -> None:
        pass

    def frames(self) -> list[tuple[int, bytes]]:
        data, found = bytes(self.written), []
        while data:
            opcode, size, offset = data[0] & 0x0F, data[1] & 0x7F, 2
            if size == 126:
                size, offset = struct.unpack("!H", data[2:4])[0], 4
            elif size == 127:
                size, offset = struct.unpack("!Q", data[2:10])[0], 10
            found.append((opcode, data[offset:offset + size]))
            data = data[offset + size:]
        return found

    def close_code(self) -> int | None:
        closes = [payload for opcode, payload in self.frames() if opcode == CLOSE]
        return struct.unpack("!H", closes[0][:2])[0] if closes else None


def socket_for(data: bytes, limits: InboundLimits | None = None, **kwargs: Any) -> tuple[WebSocket, Peer]:
    peer = Peer()
    ws = WebSocket({}, peer, io.BufferedReader(io.BytesIO(data)), limits or InboundLimits.for_messages_of(LIMIT),
                   **kwargs)
    return ws, peer


def test_a_masked_text_message_is_read_and_fragments_are_joined() -> None:
    ws, _ = socket_for(frame("40{}") + frame("42[", fin=False) + frame('"a"', CONTINUATION, fin=False)
                       + frame("]", CONTINUATION))
    assert ws.receive() == "40{}"
    assert ws.receive() == '42["a"]'
    assert ws.receive() is None and ws.closed


def test_pings_are_answered_between_fragments() -> None:
    ws, peer = socket_for(frame("42[", fin=False) + frame(b"hi", PING) + frame("]", CONTINUATION))
    assert ws.receive() == "42[]"
    assert peer.frames() == [(PONG, b"hi")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(frame("", length=LIMIT + 1), 1009, id="declared length over the limit"),
        pytest.param(frame(b"", length=256 * 1024 * 1024)[:10], 1009, id="256 MiB declared, nothing sent"),
        pytest.param(frame("4" * 600, fin=False) + frame("x" * 600, CONTINUATION), 1009, id="running total"),
        pytest.param(frame("40", mask=False), 1002, id="unmasked"),
        pytest.param(frame("40", rsv=4), 1002, id="reserved bit"),
        pytest.param(frame("40", opcode=3), 1002, id="reserved opcode"),
        pytest.param(frame("x", CONTINUATION), 1002, id="continuation of nothing"),
        pytest.param(frame("4", fin=False) + frame("2", TEXT), 1002, id="new message inside a fragmented one"),
        pytest.param(frame(b"", PING, fin=False), 1002, id="fragmented control frame"),
        pytest.param(frame(b"x" * 126, PING), 1002, id="long control frame"),
        pytest.param(frame(b"\x00\x01", BINARY), 1003, id="binary"),
        pytest.param(frame(b"4\xff\xfe"), 1007, id="not UTF-8"),
        pytest.param(frame(b"\x03\xe8\xff", CLOSE), 1007, id="close reason not UTF-8"),
        pytest.param(frame(b"\x03", CLOSE), 1002, id="close payload of one byte"),
        pytest.param(frame(struct.pack("!H", 1005), CLOSE), 1002, id="close code a client may not send"),
    ],
)
def test_refused_frames_close_with_their_code(data: bytes, code: int) -> None:
    ws, peer = socket_for(data)
    assert ws.receive() is None
    assert peer.close_code() == code


def test_a_frame_over_the_limit_is_refused_before_its_payload_is_read() -> None:
    declared = 8 * READ_CHUNK
    stream = io.BufferedReader(io.BytesIO(frame(b"x" * declared)))
    peer = Peer()
    ws = WebSocket({}, peer, stream, InboundLimits.for_messages_of(LIMIT))
    assert ws.receive() is None
    assert peer.close_code() == 1009
    assert stream.tell() <= READ_CHUNK  # one read: the payload is not waited for


def test_the_check_refuses_a_message_with_policy_violation() -> None:
    ws, peer = socket_for(frame("x"), check=lambda text: "bad_packet" if text == "x" else None)
    assert ws.receive() is None
    assert peer.close_code() == 1008


def test_a_connection_over_its_frame_budget_is_cut() -> None:
    limits = InboundLimits(LIMIT, frame_burst=5, frames_per_second=0.001, byte_burst=10_000, bytes_per_second=1)
    ws, peer = socket_for(frame("3") * 10, limits)
    assert [ws.receive() for _ in range(5)] == ["3"] * 5
    assert ws.receive() is None and peer.close_code() == 1008


def test_a_close_frame_is_answered_and_ends_the_reading() -> None:
    ws, peer = socket_for(frame(struct.pack("!H", 1001) + b"bye", CLOSE) + frame("40"))
    assert ws.receive() is None
    assert peer.close_code() == 1001
    assert ws.receive() is None  # nothing read after the close


def test_messages_after_the_gateway_closed_are_dropped_until_the_clients_close() -> None:
    ws, peer = socket_for(frame("42[]") + frame(struct.pack("!H", 1000), CLOSE))
    ws.close(1008)
    assert ws.receive() is None
    assert [opcode for opcode, _ in peer.frames()] == [CLOSE]


def test_end_of_stream_in_the_middle_of_a_frame_ends_the_connection_quietly() -> None:
    ws, peer = socket_for(frame("42[" + "x" * 100)[:20])
    assert ws.receive() is None and ws.closed
    assert peer.frames() == []


def test_send_writes_one_unmasked_text_frame() -> None:
    ws, peer = socket_for(b"")
    ws.send("2")
    ws.send("4" + "x" * 70_000)
    assert peer.frames() == [(TEXT, b"2"), (TEXT, b"4" + b"x" * 70_000)]
    assert frame_header(TEXT, 70_001)[1] == 127


# Writing: the outbox never blocks the writer, on a real socket pair under gevent.


def a_socket_pair() -> tuple[Any, Any]:
    ours, theirs = gevent.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, theirs


def read_all(sock: Any, size: int) -> bytes:
    received = bytearray()
    with gevent.Timeout(10):
        while len(received) < size:
            received += sock.recv(65536)
    return bytes(received)


def test_what_a_slow_client_does_not_take_waits_in_order_and_goes_out_as_it_reads() -> None:
    ours, theirs = a_socket_pair()
    lost: list[OSError] = []
    outbox = Outbox(ours, lost.append)
    chunks = [bytes([n]) * 8192 for n in range(200)]
    ran: list[bool] = []
    gevent.spawn(ran.append, True)  # runs as soon as the writer yields to the hub: it would, to wait
    with gevent.Timeout(10):  # a write that waited would wait for ever: this client reads nothing yet
        for chunk in chunks:
            outbox.write(chunk)
    assert ran == [], "a write never waits for the client"
    assert outbox.pending > 0, "the client did not read: most of it waits"
    finished: list[bool] = []
    outbox.then(lambda: finished.append(True))
    assert read_all(theirs, 200 * 8192) == b"".join(chunks)
    assert outbox.pending == 0 and finished == [True] and lost == []
    ours.close()
    theirs.close()


def test_then_runs_at_once_when_nothing_waits() -> None:
    ours, theirs = a_socket_pair()
    outbox = Outbox(ours, lambda exc: None)
    outbox.write(b"hello")
    done: list[bool] = []
    outbox.then(lambda: done.append(True))
    assert done == [True] and read_all(theirs, 5) == b"hello"
    ours.close()
    theirs.close()


def test_a_client_gone_while_its_backlog_waits_is_reported_once_and_the_backlog_dropped() -> None:
    ours, theirs = a_socket_pair()
    lost: list[OSError] = []
    outbox = Outbox(ours, lost.append)
    for _ in range(100):
        outbox.write(b"x" * 8192)
    assert outbox.pending
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # a reset: the flush fails in the hub
    with gevent.Timeout(10):
        while not lost:
            gevent.sleep(0.01)
    assert len(lost) == 1 and isinstance(lost[0], OSError) and outbox.pending == 0
    ours.close()


def test_a_websocket_whose_client_left_counts_it_once_and_sends_nothing_more() -> None:
    ours, theirs = a_socket_pair()
    ws = WebSocket({}, ours, io.BufferedReader(io.BytesIO(b"")), InboundLimits.for_messages_of(LIMIT))
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    before = REGISTRY.get_sample_value("gateway_send_failures_total", {"reason": "client_gone"}) or 0.0
    for _ in range(50):
        ws.send_nowait("4" + "x" * 8192)
    assert ws.closed
    assert REGISTRY.get_sample_value("gateway_send_failures_total", {"reason": "client_gone"}) == before + 1
    ours.close()


# Reading from the hub: no greenlet waits for an idle client, on a real socket pair under gevent.


class Recorder:
    """A receiver that keeps what it is handed; ``stop_at`` is a message after which it reads no more."""

    def __init__(self, stop_at: str | None = None) -> None:
        self.messages: list[str] = []
        self.ends = 0
        self.stop_at = stop_at

    def received(self, message: str) -> bool:
        self.messages.append(message)
        return message != self.stop_at

    def ended(self) -> None:
        self.ends += 1


def wait_until(condition: Any, what: str) -> None:
    with gevent.Timeout(10, AssertionError(what)):
        while not condition():
            gevent.sleep(0.005)


def a_tcp_connection() -> tuple[Any, Any]:
    """Both ends of a TCP connection on the loopback: (the gateway's, the client's)."""
    with gevent.socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = gevent.socket.create_connection(listener.getsockname(), timeout=5)
        ours, _ = listener.accept()
    return ours, theirs


def started(pipelined: bytes = b"", stop_at: str | None = None, tcp: bool = False) -> tuple[WebSocket, Recorder, Any]:
    """A WebSocket read from the hub over a socket pair, or a TCP connection: (it, its receiver, the client's end)."""
    ours, theirs = a_tcp_connection() if tcp else gevent.socket.socketpair()
    rfile = io.BufferedReader(io.BytesIO(pipelined))
    ws = WebSocket({"PATH_INFO": "/socket.io/"}, ours, rfile, InboundLimits.for_messages_of(LIMIT))
    receiver = Recorder(stop_at)
    ws.start(receiver)
    return ws, receiver, theirs


def live_greenlets() -> int:
    """Greenlets parked anywhere in the gateway's WebSocket."""

    def reading(frame: Any) -> bool:
        while frame is not None:
            if frame.f_code.co_filename == websocket.__file__:
                return True
            frame = frame.f_back
        return False

    return sum(1 for item in gc.get_objects() if isinstance(item, greenlet) and reading(item.gr_frame))


def test_an_idle_websocket_read_from_the_hub_holds_no_greenlet() -> None:
    before = live_greenlets()
    pairs = [started() for _ in range(50)]
    gevent.sleep(0.05)
    assert live_greenlets() == before, "no greenlet is left waiting for a client that sends nothing"
    for _, _, theirs in pairs:
        theirs.sendall(frame("40{}"))
    wait_until(lambda: all(receiver.messages == ["40{}"] for _, receiver, _ in pairs), "every message handed on")
    assert live_greenlets() == before, "each burst's greenlet ended with it"
    for _, _, theirs in pairs:
        theirs.close()
    wait_until(lambda: all(receiver.ends == 1 for _, receiver, _ in pairs), "every end seen")
    assert all(ws.closed for ws, _, _ in pairs)


def test_messages_in_pieces_and_bytes_sent_with_the_upgrade_reach_the_receiver_in_order() -> None:
    data = frame("42[", fin=False) + frame(b"hi", PING) + frame("]", CONTINUATION) + frame("3")
    ws, receiver, theirs = started(pipelined=frame("40{}") + data[:3])
    for at in range(3, len(data), 5):
        theirs.sendall(data[at:at + 5])
        gevent.sleep(0.001)
    wait_until(lambda: len(receiver.messages) == 3, "three messages")
    assert receiver.messages == ["40{}", "42[]", "3"]
    theirs.settimeout(5)
    assert theirs.recv(100) == bytes([0x80 | PONG, 2]) + b"hi"
    theirs.close()
    wait_until(lambda: receiver.ends == 1, "the end seen")


def test_a_refused_frame_closes_with_its_code_and_ends_the_reading_once() -> None:
    ws, receiver, theirs = started()
    theirs.sendall(frame(b"\x00", BINARY))
    wait_until(lambda: receiver.ends == 1, "the reading ended")
    theirs.settimeout(5)
    assert theirs.recv(100)[:4] == bytes([0x80 | CLOSE, 2]) + struct.pack("!H", 1003)
    assert receiver.messages == [] and ws.closed


def test_a_receiver_that_stops_ends_the_reading_and_the_socket_closes() -> None:
    ws, receiver, theirs = started(stop_at="1")
    theirs.sendall(frame("1") + frame("2"))
    wait_until(lambda: receiver.ends == 1, "the reading ended")
    assert receiver.messages == ["1"]
    theirs.settimeout(5)
    assert theirs.recv(100) == b"", "the gateway closed its end"


def test_a_close_from_the_gateway_waits_for_the_clients_answer_or_for_its_time(monkeypatch: Any) -> None:
    answered, receiver, theirs = started()
    answered.close(1001)
    theirs.sendall(frame("42[]") + frame(struct.pack("!H", 1001), CLOSE))
    wait_until(lambda: receiver.ends == 1, "the client's close frame ended the reading")
    assert receiver.messages == [], "what came after the gateway's close frame is dropped"
    monkeypatch.setattr("gateway.websocket.CLOSE_WAIT_SECONDS", 0.05)
    silent, receiver, theirs = started()
    silent.close(1001)
    wait_until(lambda: receiver.ends == 1, "a silent client is not waited for")
    theirs.close()


def test_a_cut_websocket_ends_its_reading_at_once() -> None:
    ws, receiver, theirs = started()
    ws.abort()
    wait_until(lambda: receiver.ends == 1, "the reading ended")
    theirs.close()


def closed_handshake(tcp: bool = True) -> tuple[WebSocket, Any]:
    """A WebSocket whose client sent its close frame and read the answer: (it, the client's end)."""
    ws, receiver, theirs = started(tcp=tcp)
    theirs.sendall(frame(struct.pack("!H", 1000), CLOSE))
    wait_until(lambda: receiver.ends == 1, "the client's close frame ended the reading")
    theirs.settimeout(5)
    assert read_all(theirs, 4) == bytes([0x80 | CLOSE, 2]) + struct.pack("!H", 1000)
    assert theirs.recv(100) == b"", "the gateway's side is shut at once: the client is not kept waiting"
    return ws, theirs


def socket_closed(ws: WebSocket) -> bool:
    return bool(ws._socket.fileno() == -1)


def test_what_a_client_sends_behind_its_close_frame_is_dropped_and_the_close_is_not_a_reset() -> None:
    ws, theirs = closed_handshake()
    # A client's writer thread sends its last packets after the close frame its other thread sent; a proxy
    # forwards them. A socket closed with them unread would answer with a reset, which the proxy logs as an error.
    assert not socket_closed(ws), "the socket waits for the client to end its side"
    theirs.sendall(frame("41") + frame("1"))
    theirs.shutdown(socket.SHUT_WR)
    wait_until(lambda: socket_closed(ws), "the gateway closed once the client ended its side")
    assert theirs.recv(100) == b"", "an end of stream, not a reset"
    theirs.close()


def test_a_client_that_keeps_its_side_open_after_the_close_is_not_waited_for(monkeypatch: Any) -> None:
    monkeypatch.setattr("gateway.websocket.CLOSE_WAIT_SECONDS", 0.05)
    ws, theirs = closed_handshake()
    wait_until(lambda: socket_closed(ws), "closed within the close's bound")
    theirs.close()


def test_a_client_that_floods_after_the_close_is_cut_past_the_linger_bytes(monkeypatch: Any) -> None:
    monkeypatch.setattr("gateway.websocket.CLOSE_WAIT_SECONDS", 600.0)  # only the bytes can end it in time
    ws, theirs = closed_handshake()
    junk = bytes(websocket.LINGER_BYTES // 8)
    with gevent.Timeout(10):
        while not socket_closed(ws):
            try:
                theirs.sendall(junk)
            except OSError:  # the gateway closed with the rest unread: a reset, as it should be
                break
    wait_until(lambda: socket_closed(ws), "closed past LINGER_BYTES")
    theirs.close()


def test_a_client_that_ends_its_side_first_is_closed_at_once() -> None:
    ws, receiver, theirs = started(tcp=True)
    theirs.shutdown(socket.SHUT_WR)
    wait_until(lambda: receiver.ends == 1, "the end of stream ended the reading")
    wait_until(lambda: socket_closed(ws), "closed with no wait for anything more")
    theirs.close()
