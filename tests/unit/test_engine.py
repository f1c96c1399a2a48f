"""The pinger's timetable, on stand-in connections: no server, no sockets."""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from engineio import packet as eio_packet

from gateway.engine import Pinger


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
