"""What the gateway relies on in its libraries beyond their documented API, checked on the pinned versions.

Each test names the gateway code that needs the internal. An upgrade that
renames, removes or reshapes one fails here, in the unit suite, instead of
in production. When a test fails: read the library's change, adapt the
gateway code named, then this test.
"""

from __future__ import annotations

import inspect
from typing import Any

import engineio
import gevent.baseserver
import gevent.pywsgi
import gunicorn.arbiter
import socketio
from engineio import socket as eio_socket
from geventwebsocket.handler import WebSocketHandler
from socketio import packet as sio_packet


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def a_server() -> socketio.Server:
    return socketio.Server(async_mode="threading", logger=False, engineio_logger=False)


# python-engineio


def test_engineio_socket_schedules_its_pings_through_a_method() -> None:
    """transport.Pinger.install replaces Socket.schedule_ping and reads and writes Socket.last_ping."""
    assert callable(eio_socket.Socket.schedule_ping)
    connection = eio_socket.Socket(a_server().eio, "sid")
    assert hasattr(connection, "last_ping")
    assert connection.closing is False and connection.closed is False


def test_engineio_socket_has_its_queue_and_a_close_with_a_reason() -> None:
    """transport.OutboundLimit reads Socket.queue.qsize(); cut_session and SessionGuard call close(..., reason)."""
    connection = eio_socket.Socket(a_server().eio, "sid")
    assert connection.queue.qsize() == 0
    assert {"wait", "abort", "reason"} <= set(parameters(connection.close))


def test_engineio_server_keeps_its_sessions_handlers_and_reasons() -> None:
    """upgrade_refusal counts Server.sockets; SessionGuard wraps Server.handlers, sets log_message_keys and
    async_handlers; cut_session uses Server.reason.SERVER_DISCONNECT."""
    server = a_server()
    eio = server.eio
    assert eio.sockets == {}
    assert {"connect", "message", "disconnect"} <= set(eio.handlers)
    assert isinstance(eio.log_message_keys, set)
    assert hasattr(eio, "async_handlers")
    assert eio.reason.SERVER_DISCONNECT


def test_engineio_server_judges_origins_with_a_method() -> None:
    """upgrade_refusal calls Server._cors_allowed_origins(environ) to refuse an origin before the upgrade."""
    eio = engineio.Server(async_mode="threading", cors_allowed_origins=["https://app.example"])
    environ = {"wsgi.url_scheme": "https", "HTTP_HOST": "gw.example"}
    allowed = eio._cors_allowed_origins(environ)
    assert "https://app.example" in allowed


# python-socketio


def test_socketio_server_sends_engineio_packets_through_one_method() -> None:
    """OutboundLimit replaces Server._send_eio_packet; the fan-out sends prebuilt packets with it."""
    server = a_server()
    assert parameters(server._send_eio_packet) == ["eio_sid", "eio_pkt"]


def test_socketio_server_keeps_environs_and_a_manager_flag() -> None:
    """cut_session reads Server.environ[eio_sid]["wsgi.websocket"]; the worker sets manager_initialized."""
    server = a_server()
    assert server.environ == {}
    assert server.manager_initialized is False


def test_socketio_manager_rooms_map_sids_to_engineio_sids() -> None:
    """The fan-out reads rooms["/"][room] as {sid: eio_sid}; SessionGuard reads rooms["/"][None]."""
    manager = socketio.Manager()
    manager.set_server(a_server())
    manager.initialize()
    sid = manager.connect("eio-1", "/")
    manager.enter_room(sid, "/", "balance_4")
    assert manager.rooms["/"][None][sid] == "eio-1"
    assert manager.rooms["/"]["balance_4"][sid] == "eio-1"
    assert manager.sid_from_eio_sid("eio-1", "/") == sid and manager.eio_sid_from_sid(sid, "/") == "eio-1"
    assert manager.is_connected(sid, "/")
    # FanoutManager.basic_disconnect clears what the library's own does.
    assert isinstance(manager.callbacks, dict) and isinstance(manager.pending_connect, dict)
    assert isinstance(manager.pending_disconnect, dict)


def test_socketio_pubsub_manager_has_the_methods_the_fanout_overrides_or_calls() -> None:
    """FanoutManager overrides _thread (to run the gateway's Listener), _publish and _handle_emit, keeps a
    room index over the basic_* methods, and dispatches each queue method to its _handle_*."""
    for name in ("_thread", "_publish", "_handle_emit", "_handle_callback", "_handle_disconnect",
                 "_handle_enter_room", "_handle_leave_room", "_handle_close_room", "basic_enter_room",
                 "basic_leave_room", "basic_disconnect", "get_rooms", "initialize"):
        assert callable(getattr(socketio.RedisManager, name)), name


def test_a_queue_emit_carries_its_data_as_a_one_element_list() -> None:
    """The wire shape of Flask-SocketIO queue emits (changed upstream in December 2025): the fan-out unwraps
    a one-element list for a client that catches up (FanoutManager._deliver)."""
    published: list[dict[str, Any]] = []

    class Capture(socketio.PubSubManager):  # type: ignore[misc]
        def _publish(self, data: dict[str, Any]) -> None:
            published.append(data)

    manager = Capture(channel="flask-socketio", write_only=True)
    manager.emit("balance", {"usd": "1"}, namespace="/", room="balance_4")
    (message,) = published
    assert message["method"] == "emit" and message["room"] == "balance_4" and message["event"] == "balance"
    assert message["data"] == [{"usd": "1"}]


def test_socketio_packets_decode_through_an_overridable_method() -> None:
    """sessions.StrictPacket subclasses Packet, overriding __init__(encoded_packet=...) and decode()."""
    assert "encoded_packet" in parameters(sio_packet.Packet.__init__)
    packet = sio_packet.Packet(encoded_packet='2["subscribe",{"topics":["balance"]}]')
    assert (packet.packet_type, packet.namespace, packet.data) == (2, None, ["subscribe", {"topics": ["balance"]}])
    assert "serializer" in parameters(socketio.Server.__init__)


# gevent and gevent-websocket


def test_gevent_wsgi_handler_has_the_methods_the_gateway_handler_overrides() -> None:
    """transport.Handler overrides read_requestline, read_request, handle, handle_error, _handle_client_error
    and log_error, and calls _send_error_response_if_possible."""
    for name in ("read_requestline", "read_request", "handle", "handle_error", "_handle_client_error",
                 "log_error", "_send_error_response_if_possible", "run_application"):
        assert callable(getattr(gevent.pywsgi.WSGIHandler, name)), name


def test_gevent_websocket_handler_upgrades_through_two_methods() -> None:
    """transport.Handler overrides upgrade_websocket and upgrade_connection, and uses GUID and run_websocket."""
    assert callable(WebSocketHandler.upgrade_websocket) and callable(WebSocketHandler.upgrade_connection)
    assert callable(WebSocketHandler.run_websocket)
    assert WebSocketHandler.GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_gevent_servers_stop_accepting() -> None:
    """worker._stop_accepting calls BaseServer.stop_accepting on every gevent server it finds."""
    assert callable(gevent.baseserver.BaseServer.stop_accepting)


# gunicorn


def test_gunicorn_arbiter_keeps_its_listeners() -> None:
    """gunicorn.conf.py reads Arbiter.LISTENERS to tell the master from a worker."""
    assert hasattr(gunicorn.arbiter.Arbiter, "LISTENERS")
