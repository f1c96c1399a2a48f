"""The client manager's pub/sub backend: what a queue message may ask, and who acts on it.

No Redis: the listener is never started (``_listen`` is read with a stopped
one), and the fan-out is a stand-in that records what reached it. The
manager's room index is checked against python-socketio's own in
test_library_contract.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gevent
import pytest
import redis
from prometheus_client import REGISTRY

from gateway import protocol
from gateway.listener import Listener
from gateway.manager import ClientManager, QueueFilter

ROOM = "balance_4"


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_queue_refused_total", {"reason": reason}) or 0.0


def emit(**fields: Any) -> dict[str, Any]:
    return {"method": "emit", "event": "balance", "data": [{"cash": "1"}], "namespace": "/", "room": ROOM,
            "skip_sid": None, "callback": None, "host_id": "elsewhere", **fields}


@pytest.mark.parametrize(("message", "reason"), [
    (emit(room=None), "broadcast"),
    (emit(room="lobby"), "bad_room"),
    (emit(room="balance_4_x/../"), "bad_room"),
    (emit(namespace="/admin"), "bad_emit"),
    (emit(binary=True), "bad_emit"),
    ({"method": "disconnect", "sid": "x", "namespace": "/"}, "disconnect"),
    ({"method": "enter_room", "sid": "x", "namespace": "/", "room": ROOM}, "enter_room"),
    ({"method": "close_room", "namespace": "/", "room": ROOM}, "close_room"),
    ({"method": "callback", "sid": "x", "id": 1, "args": []}, "callback"),
    ({"method": "shutdown"}, "unknown"),
    ({"no": "method"}, "unknown"),
])
def test_the_default_filter_lets_through_only_emits_to_a_users_room(message: dict[str, Any], reason: str) -> None:
    before = refused(reason)
    assert QueueFilter().method(message) is None
    assert refused(reason) == before + 1


def test_a_refusal_is_logged_once_per_reason_and_counted_every_time(caplog: pytest.LogCaptureFixture) -> None:
    queue = QueueFilter()
    for _ in range(3):
        queue.method(emit(room=None))
        queue.method(emit(room="lobby"))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "broadcast" in warnings[0] and "GATEWAY_QUEUE_METHODS allows emit" in warnings[0]


def test_what_an_operator_allows_passes_and_a_callback_only_when_allowed() -> None:
    assert QueueFilter(("emit", "broadcast")).method(emit(room=None, callback=["s", "/", 1])) == "broadcast"
    message = emit(callback=["s", "/", 1])
    assert QueueFilter().method(message) == "emit" and "callback" not in message
    kept = emit(callback=["s", "/", 1])
    assert QueueFilter(("emit", "callback")).method(kept) == "emit" and kept["callback"] == ["s", "/", 1]


class StandInFanout:
    def __init__(self) -> None:
        self.emits: list[dict[str, Any]] = []
        self.passed: list[dict[str, Any]] = []

    def on_emit(self, message: dict[str, Any]) -> None:
        self.emits.append(message)

    def passed_on(self, message: dict[str, Any]) -> None:
        self.passed.append(message)


def a_manager(*allowed: str) -> tuple[ClientManager, StandInFanout]:
    listener = Listener(redis.Redis, (protocol.QUEUE_CHANNEL,), str)
    manager = ClientManager(protocol.QUEUE_CHANNEL, listener, redis.Redis(), QueueFilter(allowed or ("emit",)))
    fanout = StandInFanout()
    manager.fanout = fanout  # type: ignore[assignment]
    return manager, fanout


def raw(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def test_an_emit_to_a_users_room_is_the_fanouts_and_nothing_is_left_for_socketio() -> None:
    manager, fanout = a_manager()
    assert manager._queue_message(raw(emit())) is None
    (message,) = fanout.emits
    assert (message["event"], message["room"], message["data"]) == ("balance", ROOM, [{"cash": "1"}])


def test_a_workers_own_messages_come_back_to_it_and_are_skipped() -> None:
    manager, fanout = a_manager("emit", "disconnect")
    assert manager._queue_message(raw(emit(host_id=manager.host_id))) is None
    assert manager._queue_message(raw({"method": "disconnect", "host_id": manager.host_id})) is None
    assert fanout.emits == []


def test_what_an_operator_allows_beyond_emits_is_left_to_socketio_and_counted() -> None:
    manager, fanout = a_manager("emit", "broadcast", "disconnect", "callback")
    broadcast = emit(room=None)
    assert manager._queue_message(raw(broadcast)) == broadcast
    assert fanout.passed == [broadcast]
    with_callback = emit(callback=["s", "/", 1])
    assert manager._queue_message(raw(with_callback)) == with_callback
    disconnect = {"method": "disconnect", "sid": "x", "namespace": "/", "host_id": "elsewhere"}
    assert manager._queue_message(raw(disconnect)) == disconnect
    assert fanout.emits == []


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'"emit"', b"\xff\xfe"])
def test_a_queue_message_that_is_not_a_json_object_is_skipped(data: bytes) -> None:
    manager, fanout = a_manager()
    assert manager._queue_message(data) is None
    assert fanout.emits == []


def test_listen_ends_the_task_as_gevent_ends_a_killed_greenlet_once_the_listener_stopped() -> None:
    manager, _ = a_manager()
    manager.listener.stop()
    with pytest.raises(gevent.GreenletExit):
        list(manager._listen())


@pytest.mark.parametrize("room", ["xq_Z9aGfB0sLm-AAAAB", "news_4", "abc_DEF123"])
def test_an_emit_to_a_room_that_only_reads_like_a_users_is_refused(room: str) -> None:
    """A client's own room is its Socket.IO sid, random base64url that may read as <word>_<rest>: an emit reaches
    only the rooms of the gateway's own topics."""
    before = refused("bad_room")
    assert QueueFilter(("emit",), ("balance", "pnl")).method(emit(room=room)) is None
    assert refused("bad_room") == before + 1
    assert QueueFilter(("emit",), ("balance", "pnl")).method(emit(room="pnl_4")) == "emit"


def test_a_kick_goes_to_its_handler_and_a_malformed_one_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    manager, fanout = a_manager()
    kicked: list[str] = []
    manager.on_kick = kicked.append  # type: ignore[method-assign]
    manager._kick(protocol.kick_message("u4").encode())
    manager._kick(b"k1 \xff\xfe")
    manager._kick(b"k1 two users")
    assert kicked == ["u4"]
    assert [r.getMessage() for r in caplog.records] == ["fan-out skipped a malformed kick message (5 bytes)",
                                                        "fan-out skipped a malformed kick message (12 bytes)"]
    assert fanout.emits == [] and fanout.passed == []
