"""The session guard on a real python-socketio server without a network: deadlines, eviction, refusals.

Sessions are opened by calling the Engine.IO handlers the guard installed,
as python-engineio would for a new connection; none has a socket, so closing
one only forgets it.
"""

from __future__ import annotations

import time

import pytest
import socketio
from prometheus_client import REGISTRY

from gateway.sessions import REFUSED_GRACE_SECONDS, SessionGuard, StrictPacket, _due

ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/socket.io/", "QUERY_STRING": "EIO=4&transport=websocket"}


def mistakes(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_client_errors_total", {"reason": reason}) or 0.0


def a_guard(auth_timeout: float = 5.0, max_unauthenticated: int = 10, accept: bool = True) -> SessionGuard:
    server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False, serializer=StrictPacket)
    server.on("connect", lambda sid, environ, auth=None: accept)
    guard = SessionGuard(server, auth_timeout, max_unauthenticated)
    guard.install()
    return guard


def open_session(guard: SessionGuard, eio_sid: str) -> None:
    guard.server.eio.handlers["connect"](eio_sid, dict(ENVIRON))


def message(guard: SessionGuard, eio_sid: str, data: object) -> None:
    guard.server.eio.handlers["message"](eio_sid, data)


def test_a_session_waits_for_its_connect_until_the_deadline_and_no_longer() -> None:
    guard = a_guard(auth_timeout=5.0)
    before = mistakes("auth_timeout")
    open_session(guard, "e1")
    now = time.monotonic()
    assert guard.expire(now + 4.0) == 0
    assert guard.expire(now + 6.0) == 1
    assert guard.unauthenticated == {} and mistakes("auth_timeout") == before + 1


def test_a_valid_connect_takes_the_session_off_the_clock() -> None:
    guard = a_guard()
    open_session(guard, "e1")
    message(guard, "e1", "0")
    assert guard.authenticated("e1") and guard.unauthenticated == {}
    assert guard.expire(time.monotonic() + 3600) == 0


def test_past_the_cap_the_oldest_waiting_session_is_evicted() -> None:
    guard = a_guard(max_unauthenticated=2)
    before = mistakes("pending_evicted")
    for eio_sid in ("e1", "e2", "e3"):
        open_session(guard, eio_sid)
    assert list(guard.unauthenticated) == ["e2", "e3"]
    assert mistakes("pending_evicted") == before + 1


@pytest.mark.parametrize(("data", "reason"), [
    ('2["subscribe",{}]', "not_connected"),
    (b"\x00binary", "binary"),
])
def test_anything_but_a_connect_first_ends_the_session_and_is_counted(data: object, reason: str) -> None:
    guard = a_guard()
    before = mistakes(reason)
    open_session(guard, "e1")
    message(guard, "e1", data)
    assert "e1" not in guard.unauthenticated and mistakes(reason) == before + 1


def test_a_malformed_packet_after_connect_ends_the_session() -> None:
    guard = a_guard()
    before = mistakes("bad_packet")
    open_session(guard, "e1")
    message(guard, "e1", "0")
    message(guard, "e1", '2["subscribe",')
    assert mistakes("bad_packet") == before + 1


def test_a_refused_connect_is_closed_after_its_grace_unless_the_client_left() -> None:
    guard = a_guard(accept=False)
    for eio_sid in ("e1", "e2"):
        open_session(guard, eio_sid)
        message(guard, eio_sid, "0")
    assert list(guard.refused) == ["e1", "e2"] and not guard.authenticated("e1")
    guard.server.eio.handlers["disconnect"]("e2", "client disconnect")
    now = time.monotonic()
    guard.expire(now)
    assert list(guard.refused) == ["e1"]
    guard.expire(now + REFUSED_GRACE_SECONDS + 0.1)
    assert guard.refused == {} and guard.unauthenticated == {}


def test_deadlines_fall_due_in_the_order_they_were_set() -> None:
    deadlines = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert _due(deadlines, 0.5) == [] and _due(deadlines, 2.0) == ["a", "b"] and _due(deadlines, 9) == ["a", "b", "c"]
