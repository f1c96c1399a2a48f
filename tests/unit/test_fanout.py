"""The fan-out on stand-in connections: what each client is sent, in what order, and what is counted.

No Redis and no Socket.IO server: the fan-out reaches clients only through
its ``Connections`` (here a dict of rooms and a list of what was sent), and
reads Redis only after a reconnect, which the integration tests cover.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
import redis
from engineio import packet as eio_packet

from gateway import protocol
from gateway.fanout import Fanout
from gateway.history import Catchup, History

ROOM = "balance_4"


class StandInConnections:
    """Rooms of sid -> eio sid, and every packet sent, as (eio sid, Socket.IO packet text)."""

    def __init__(self, rooms: dict[str | None, dict[str, str]]) -> None:
        self.rooms = rooms
        for members in list(rooms.values()):
            for sid, eio_sid in members.items():
                rooms.setdefault(sid, {sid: eio_sid})
        self.sent: list[tuple[str, str]] = []
        self.packets: list[eio_packet.Packet] = []

    def members(self, room: str | None) -> Mapping[str, str]:
        return self.rooms.get(room, {})

    def send(self, eio_sid: str, packet: eio_packet.Packet) -> None:
        assert packet.packet_type == eio_packet.MESSAGE
        self.sent.append((eio_sid, packet.data))
        self.packets.append(packet)

    def seqs(self, eio_sid: str) -> list[int]:
        """The seqs one client was sent, in order."""
        return [json.loads(text[1:])[1]["seq"] for to, text in self.sent if to == eio_sid]


def a_fanout(rooms: dict[str | None, dict[str, str]]) -> tuple[Fanout, StandInConnections]:
    connections = StandInConnections(rooms)
    return Fanout(connections, History(redis.Redis(), "gw"), topics=("balance",)), connections


def update(seq: int, topic: str = "balance", user: str = "4") -> bytes:
    envelope = protocol.update_envelope(topic=topic, user=user, ts=1.0, data_json='{"cash":"1"}')
    return envelope.with_seq(seq).encode()


def history_entry(seq: int) -> dict[str, Any]:
    return {"topic": "balance", "user_id": "4", "seq": seq, "ts": 1.0, "data": {"cash": "1"}}


def test_an_update_goes_to_every_client_of_its_room_as_it_was_published() -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a", "b": "eio-b"}, "orders_4": {"c": "eio-c"}})
    fanout.on_update(update(1))
    assert sorted(to for to, _ in connections.sent) == ["eio-a", "eio-b"]
    first, second = connections.packets
    assert first is second, "one packet is built for the whole room"
    assert first.data == '2["balance",{"topic":"balance","user_id":"4","seq":1,"ts":1.0,"data":{"cash":"1"}}]'
    assert fanout.tally.delivered["balance"] == 2 and fanout.tally.received["balance"] == 1


def test_every_seq_reaches_a_client_once_and_in_order() -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a"}})
    for seq in (1, 2, 2, 1, 3, 5, 4):
        fanout.on_update(update(seq))
    assert connections.seqs("eio-a") == [1, 2, 3, 5]
    assert fanout.tally.skipped["balance"] == 3


def test_a_room_without_clients_is_sent_nothing_and_remembers_nothing() -> None:
    fanout, connections = a_fanout({})
    fanout.on_update(update(1))
    assert connections.sent == [] and fanout.sequencer.last_seq == {}


def test_a_client_that_catches_up_gets_what_it_missed_then_what_was_held_newer_than_it() -> None:
    rooms: dict[str | None, dict[str, str]] = {ROOM: {"a": "eio-a"}}
    fanout, connections = a_fanout(rooms)
    fanout.on_update(update(4))
    with fanout.holding("b", [ROOM]) as hold:
        rooms[ROOM]["b"], rooms["b"] = "eio-b", {"b": "eio-b"}  # b joins, and history is read: it is at 5
        fanout.on_update(update(5))
        fanout.on_update(update(6))
    hold.deliver({ROOM: Catchup([history_entry(3), history_entry(4), history_entry(5)], current=5)})
    fanout.on_update(update(7))
    assert connections.seqs("eio-a") == [4, 5, 6, 7]
    assert connections.seqs("eio-b") == [3, 4, 5, 6, 7]


def test_a_held_client_is_sent_a_held_update_once_even_when_history_had_it() -> None:
    fanout, connections = a_fanout({ROOM: {"b": "eio-b"}})
    with fanout.holding("b", [ROOM]) as hold:
        fanout.on_update(update(1))
        fanout.on_update(update(2))
    hold.deliver({ROOM: Catchup([history_entry(1), history_entry(2)], current=2)})
    fanout.on_update(update(2))
    fanout.on_update(update(3))
    assert connections.seqs("eio-b") == [1, 2, 3]


def test_a_queue_emit_is_sent_unchanged_every_time_and_held_back_like_an_update() -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a", "b": "eio-b"}})
    emit = {"method": "emit", "event": "balance", "room": ROOM, "data": [{"seq": 9}], "namespace": "/"}
    fanout.on_emit(emit)
    with fanout.holding("b", [ROOM]) as hold:
        fanout.on_emit(emit)
    hold.deliver({})
    expected = '2["balance",{"seq":9}]'
    assert [text for to, text in connections.sent if to == "eio-a"] == [expected, expected]
    assert [text for to, text in connections.sent if to == "eio-b"] == [expected, expected]
    assert fanout.tally.delivered["balance"] == 3, "the held copy is sent by the catch-up"


def test_a_queue_emit_of_an_unknown_event_is_counted_as_other() -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a"}})
    fanout.on_emit({"method": "emit", "event": "news", "room": ROOM, "data": ["x", 2]})
    assert connections.sent == [("eio-a", '2["news","x",2]')]
    assert fanout.tally.received["other"] == 1 and fanout.tally.received["news"] == 0


def test_a_malformed_update_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a"}})
    fanout.on_update(b"u1 balance 4 not-a-time 1\n{}")
    assert connections.sent == []
    assert [record.levelname for record in caplog.records] == ["WARNING"]


def test_a_failing_send_is_logged_with_its_traceback_and_the_next_update_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fanout, connections = a_fanout({ROOM: {"a": "eio-a"}})
    send = connections.send

    def fails_once(eio_sid: str, packet: eio_packet.Packet) -> None:
        connections.send = send  # type: ignore[method-assign]
        raise RuntimeError("send broke")

    connections.send = fails_once  # type: ignore[method-assign]
    fanout.on_update(update(1))
    fanout.on_update(update(2))
    assert connections.seqs("eio-a") == [2]
    (record,) = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert record.levelname == "ERROR" and record.exc_info is not None


def test_rooms_left_by_every_client_are_forgotten() -> None:
    rooms: dict[str | None, dict[str, str]] = {ROOM: {"a": "eio-a"}, "orders_4": {"a": "eio-a"}}
    fanout, _ = a_fanout(rooms)
    fanout.on_update(update(1))
    fanout.on_update(update(1, topic="orders"))
    del rooms["orders_4"]
    fanout.forget_empty_rooms()
    assert fanout.sequencer.last_seq == {ROOM: 1}
