"""The Engine.IO adapter: the pinger's timetable on stand-in connections; sends, the outbound cap and cutting
sessions on a real python-socketio server without a network."""

from __future__ import annotations

import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import flask
import gevent
import gevent.socket
import socketio
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from prometheus_client import REGISTRY

from gateway.engine import (
    DirectSocket,
    EngineConnections,
    OutboundLimit,
    Pinger,
    backlog,
    cut_every_session,
    forget_closed,
    keep_slim_environs,
    send_directly,
)
from gateway.frames import CLOSE, TEXT
from gateway.inbound import InboundLimits, engineio_refusal
from gateway.websocket import WebSocket
from tests.integration.rawws import frame


@dataclass
class StandIn:
    """What the pinger touches of an Engine.IO connection."""

    server: Any
    last_ping: float | None = field(default_factory=time.time)
    closing: bool = False
    closed: bool = False
    sent: list[int] = field(default_factory=list)

    def send(self, packet: eio_packet.Packet) -> None:
        self.sent.append(packet.packet_type)


@dataclass
class StandInServer:
    ping_interval: float = 25.0


def test_a_connection_is_pinged_one_interval_after_it_was_scheduled() -> None:
    pinger = Pinger(StandInServer(ping_interval=10))
    connection = StandIn(pinger.eio)
    pinger.schedule(connection)
    now = time.monotonic()
    assert pinger.send_due(now + 9.9) == 0 and connection.sent == []
    assert pinger.send_due(now + 10.1) == 1 and connection.sent == [eio_packet.PING]
    assert connection.last_ping is not None and pinger.waiting == 0


def test_pings_go_out_in_the_order_they_fell_due() -> None:
    pinger = Pinger(StandInServer(ping_interval=5))
    first, second = StandIn(pinger.eio), StandIn(pinger.eio)
    pinger.schedule(first)
    start = time.monotonic()
    pinger.schedule(second)
    assert pinger.send_due(start + 5.0) == 1
    assert (first.sent, second.sent) == ([eio_packet.PING], [])
    assert pinger.send_due(time.monotonic() + 5.0) == 1
    assert second.sent == [eio_packet.PING]


def test_a_pong_that_arrives_twice_schedules_one_ping() -> None:
    pinger = Pinger(StandInServer())
    connection = StandIn(pinger.eio)
    pinger.schedule(connection)
    pinger.schedule(connection)  # last_ping is None until the ping is sent
    assert pinger.waiting == 1


def test_closed_and_closing_connections_are_not_pinged() -> None:
    pinger = Pinger(StandInServer(ping_interval=1))
    closed, closing = StandIn(pinger.eio, closed=True), StandIn(pinger.eio, closing=True)
    pinger.schedule(closed)
    pinger.schedule(closing)
    assert pinger.send_due(time.monotonic() + 2) == 0
    assert closed.sent == closing.sent == [] and pinger.waiting == 0


def test_a_failing_send_does_not_stop_the_other_pings() -> None:
    class Broken(StandIn):
        def send(self, packet: eio_packet.Packet) -> None:
            raise RuntimeError("queue gone")

    pinger = Pinger(StandInServer(ping_interval=1))
    broken, healthy = Broken(pinger.eio), StandIn(pinger.eio)
    pinger.schedule(broken)
    pinger.schedule(healthy)
    assert pinger.send_due(time.monotonic() + 2) == 1
    assert healthy.sent == [eio_packet.PING]


def test_run_pings_until_stopped() -> None:
    pinger = Pinger(StandInServer(ping_interval=0.01))
    connection = StandIn(pinger.eio)
    stopping = threading.Event()
    thread = threading.Thread(target=pinger.run, args=(stopping,))
    thread.start()
    pinger.schedule(connection)
    deadline = time.monotonic() + 5
    while not connection.sent and time.monotonic() < deadline:
        stopping.wait(0.005)
    stopping.set()
    thread.join(5)
    assert connection.sent == [eio_packet.PING] and not thread.is_alive()


def test_a_connection_that_ended_is_not_kept_alive_until_its_ping() -> None:
    pinger = Pinger(StandInServer(ping_interval=25))
    connection = StandIn(pinger.eio)
    pinger.schedule(connection)
    gone = weakref.ref(connection)
    del connection
    assert gone() is None, "the timetable kept an ended connection alive"
    assert pinger.send_due(time.monotonic() + 30) == 0 and pinger.waiting == 0


# Sends and the outbound cap, on a real python-socketio server without a network.


def a_server_with_a_session(eio_sid: str = "eio-1") -> tuple[socketio.Server, Any]:
    server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False)
    session = eio_socket.Socket(server.eio, eio_sid)
    session.connected = True
    server.eio.sockets[eio_sid] = session
    server.manager.initialize()
    sid = server.manager.connect(eio_sid, "/")
    server.manager.enter_room(sid, "/", "balance_4")
    return server, session


def slow_clients() -> float:
    return REGISTRY.get_sample_value("gateway_send_failures_total", {"reason": "slow_client"}) or 0.0


def test_connections_are_the_managers_rooms_and_sends_queue_on_the_session() -> None:
    server, session = a_server_with_a_session()
    connections = EngineConnections(server.manager)
    (sid,) = connections.members("balance_4")
    assert connections.members(sid) == {sid: "eio-1"} and connections.members(None) == {sid: "eio-1"}
    assert connections.members("orders_4") == {}
    packet = eio_packet.Packet(eio_packet.MESSAGE, '2["balance",{}]')
    connections.send("eio-1", packet)
    assert session.queue.get_nowait() is packet


def test_a_session_with_its_queue_full_is_cut_and_counted_instead_of_sent_to() -> None:
    server, session = a_server_with_a_session()
    limited = OutboundLimit(EngineConnections(server.manager), limit=2)
    before = slow_clients()
    packet = eio_packet.Packet(eio_packet.MESSAGE, '2["balance",{}]')
    limited.send("eio-1", packet)
    limited.send("eio-1", packet)
    assert slow_clients() == before
    limited.send("eio-1", packet)
    assert session.closed and slow_clients() == before + 1
    limited.send("eio-1", packet)
    assert slow_clients() == before + 1, "a session is cut once"
    assert session.queue.qsize() <= 3, "nothing queued past the limit but the close"


def test_every_session_is_cut_when_a_worker_stops() -> None:
    server, session = a_server_with_a_session()
    assert cut_every_session(server) == 1
    assert session.closed


# A session served directly: no writer greenlet, no queue, on a real socket pair under gevent.


def server_frames(sock: Any, count: int) -> list[tuple[int, str]]:
    """``count`` unmasked server frames read from ``sock``: (opcode, text)."""
    data, found = b"", []
    with gevent.Timeout(10):
        while len(found) < count:
            data += sock.recv(65536)
            while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):
                size = data[1] & 0x7F
                found.append((data[0] & 0x0F, data[2:2 + size].decode()))
                data = data[2 + size:]
    return found


def test_a_websocket_session_is_read_from_the_hub_and_written_by_the_caller() -> None:
    server = socketio.Server(async_mode="gevent", logger=False, engineio_logger=False)
    send_directly(server)
    gone: list[str] = []
    server.eio.on("disconnect", lambda sid, reason: gone.append(str(reason)))
    session = eio_socket.Socket(server.eio, "eio-1")
    server.eio.sockets["eio-1"] = session
    session.send(eio_packet.Packet(eio_packet.OPEN, {"sid": "eio-1"}))  # as python-engineio, before the upgrade
    ours, theirs = gevent.socket.socketpair()
    ws = WebSocket({}, ours, ours.makefile("rb"), InboundLimits.for_messages_of(4096), engineio_refusal)
    driver = server.eio._async["websocket"](session._websocket_handler, server.eio)
    assert driver({"wsgi.websocket": ws}, None) == [], "the WSGI handler's greenlet is let go at once"
    assert ws.handed_over
    (opened,) = server_frames(theirs, 1)
    assert opened[1].startswith('0{"sid":"eio-1"')
    assert isinstance(session, DirectSocket) and backlog(session) == 0
    assert not hasattr(session.queue, "put"), "no queue: nothing can wait in one"
    session.send(eio_packet.Packet(eio_packet.MESSAGE, '2["balance",{"seq":1}]'))
    assert server_frames(theirs, 1) == [(TEXT, '42["balance",{"seq":1}]')], "written by the caller, at once"
    theirs.sendall(frame(struct.pack("!H", 1000), CLOSE))
    with gevent.Timeout(10):
        while "eio-1" in server.eio.sockets:
            gevent.sleep(0.01)
    theirs.settimeout(5)
    assert theirs.recv(100) == bytes([0x80 | CLOSE, 2]) + struct.pack("!H", 1000), "the client's close answered"
    assert session.closed and theirs.recv(100) == b"", "then the socket closed, as the reading ended"
    assert gone == [server.eio.reason.TRANSPORT_CLOSE], "the disconnect handler ran once"
    theirs.close()


def test_a_sessions_environ_keeps_only_what_its_handlers_read_and_flask_still_builds_a_request_from_it() -> None:
    app = flask.Flask("slim")
    server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False)
    keep_slim_environs(server)
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/socket.io/", "SERVER_NAME": "gw.example",
        "QUERY_STRING": "EIO=4&transport=websocket&token=t", "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "https", "HTTP_HOST": "gw.example", "HTTP_AUTHORIZATION": "Bearer t",
        "HTTP_USER_AGENT": "x" * 500, "HTTP_COOKIE": "y" * 500, "wsgi.input": object(), "flask.app": app,
        "wsgi.websocket": "the WebSocket",
    }
    server.environ["eio-1"] = environ
    kept = server.environ["eio-1"]
    assert set(kept) == set(environ) - {"HTTP_USER_AGENT", "HTTP_COOKIE", "wsgi.input"}
    with app.request_context(kept):
        assert flask.request.headers["Authorization"] == "Bearer t" and flask.request.args["token"] == "t"
        assert flask.request.path == "/socket.io/" and flask.request.host == "gw.example"
    del server.environ["eio-1"]
    assert server.environ == {}


def test_closed_sessions_are_forgotten_at_once_not_at_the_librarys_next_sweep() -> None:
    server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False)
    sessions = {sid: eio_socket.Socket(server.eio, sid) for sid in ("open", "closed", "closing")}
    sessions["closed"].closed = True
    sessions["closing"].closing = True  # still closing: python-engineio's own sweep leaves it too
    server.eio.sockets.update(sessions)
    assert forget_closed(server) == 1
    assert set(server.eio.sockets) == {"open", "closing"}
    assert forget_closed(server) == 0
