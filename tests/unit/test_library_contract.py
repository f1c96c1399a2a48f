"""What the gateway relies on in its libraries beyond their documented API, checked on the pinned versions.

Each test names the gateway code that needs the internal. An upgrade that
renames, removes or reshapes one fails here, in the unit suite, instead of
in production. When a test fails: read the library's change, adapt the
gateway code named, then this test.
"""

from __future__ import annotations

import inspect
import logging
import socket
from typing import Any

import engineio
import gevent
import gevent.baseserver
import gevent.pywsgi
import gevent.socket
import gunicorn.arbiter
import pytest
import redis
import socketio
from engineio import socket as eio_socket
from engineio.async_drivers import gevent as eio_gevent
from geventwebsocket.handler import WebSocketHandler
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from redis._parsers import _HiredisParser
from redis._parsers.socket import SocketBuffer
from socketio import packet as sio_packet

from gateway import protocol
from gateway.listener import Listener
from gateway.manager import ClientManager
from gateway.metrics import observe_all


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def a_server() -> socketio.Server:
    return socketio.Server(async_mode="threading", logger=False, engineio_logger=False)


# python-engineio


def test_engineio_socket_schedules_its_pings_through_a_method() -> None:
    """engine.Pinger.install replaces Socket.schedule_ping and reads and writes Socket.last_ping."""
    assert callable(eio_socket.Socket.schedule_ping)
    connection = eio_socket.Socket(a_server().eio, "sid")
    assert hasattr(connection, "last_ping")
    assert connection.closing is False and connection.closed is False


def test_engineio_socket_has_its_queue_and_a_close_with_a_reason() -> None:
    """engine.OutboundLimit reads Socket.queue.qsize(); engine.cut_session and close_session call close(..., reason)."""
    connection = eio_socket.Socket(a_server().eio, "sid")
    assert connection.queue.qsize() == 0
    assert {"wait", "abort", "reason"} <= set(parameters(connection.close))


def test_engineio_server_keeps_its_sessions_handlers_and_reasons() -> None:
    """engine.session_count counts Server.sockets; engine.take_handlers wraps Server.handlers and sets
    log_message_keys and async_handlers; engine.cut_session uses Server.reason.SERVER_DISCONNECT."""
    server = a_server()
    eio = server.eio
    assert eio.sockets == {}
    assert {"connect", "message", "disconnect"} <= set(eio.handlers)
    assert isinstance(eio.log_message_keys, set)
    assert hasattr(eio, "async_handlers")
    assert eio.reason.SERVER_DISCONNECT


def test_engineio_server_judges_origins_with_a_method() -> None:
    """engine.origin_refused calls Server._cors_allowed_origins(environ) to refuse an origin before the upgrade."""
    eio = engineio.Server(async_mode="threading", cors_allowed_origins=["https://app.example"])
    environ = {"wsgi.url_scheme": "https", "HTTP_HOST": "gw.example"}
    allowed = eio._cors_allowed_origins(environ)
    assert "https://app.example" in allowed


# python-socketio


def test_engineio_server_sends_a_packet_to_a_session_publicly() -> None:
    """engine.EngineConnections.send calls Server.send_packet(sid, packet), python-engineio's public send, which
    python-socketio's own sends go through."""
    server = a_server()
    assert parameters(server.eio.send_packet) == ["sid", "pkt"]
    assert "eio.send_packet(" in inspect.getsource(socketio.Server._send_eio_packet)


def test_socketio_server_keeps_environs_and_a_manager_flag() -> None:
    """engine.cut_session reads Server.environ[eio_sid]["wsgi.websocket"]; engine.start_manager sets
    manager_initialized and calls the manager's initialize(), as python-socketio does on a first connection."""
    server = a_server()
    assert server.environ == {}
    assert server.manager_initialized is False
    assert "self.manager_initialized = True" in inspect.getsource(socketio.Server._handle_eio_connect)


def test_socketio_manager_rooms_map_sids_to_engineio_sids() -> None:
    """engine.EngineConnections reads rooms["/"][room] as {sid: eio_sid}, every client alone in the room of its
    sid and all in the room None; engine.socketio_session_count counts rooms["/"][None]."""
    manager = socketio.Manager()
    manager.set_server(a_server())
    manager.initialize()
    sid = manager.connect("eio-1", "/")
    manager.enter_room(sid, "/", "balance_4")
    assert manager.rooms["/"][None][sid] == "eio-1"
    assert manager.rooms["/"][sid] == {sid: "eio-1"}
    assert manager.rooms["/"]["balance_4"][sid] == "eio-1"
    assert manager.sid_from_eio_sid("eio-1", "/") == sid and manager.eio_sid_from_sid(sid, "/") == "eio-1"
    assert manager.is_connected(sid, "/")


ROOMS = ("balance_4", "orders_4", "balance_5")
Step = tuple[str, int, int]  # (what, client, room)
steps = st.lists(st.tuples(st.sampled_from(["connect", "enter", "leave", "callback", "pre_disconnect",
                                            "disconnect", "close"]), st.integers(0, 2), st.integers(0, 2)),
                 max_size=30)


def run(manager: socketio.Manager, script: list[Step]) -> dict[str, Any]:
    """Play ``script`` on ``manager``; return its state, each sid named by the step that made it."""
    manager.set_server(a_server())
    sids: dict[int, str] = {}
    names: dict[str | None, str | None] = {None: None}
    for what, client, room in script:
        sid = sids.get(client)
        if what == "connect" and sid is None:
            sid = sids[client] = manager.connect(f"eio-{client}", "/")
            names[sid] = f"client-{client}"
            names[manager.pre_connect(f"eio-pre-{client}", "/")] = f"pending-{client}"
        elif sid is None:
            continue
        elif what == "enter":
            manager.basic_enter_room(sid, "/", ROOMS[room])
        elif what == "leave":
            manager.basic_leave_room(sid, "/", ROOMS[room])
        elif what == "callback":
            manager._generate_ack_id(sid, print)
        elif what == "pre_disconnect":
            manager.pre_disconnect(sid, "/")
        elif what == "close":
            manager.basic_close_room(ROOMS[room], "/")
        elif what == "disconnect":
            manager.basic_disconnect(sid, "/")
            del sids[client]
    name = lambda sid: names.get(sid, sid)  # noqa: E731
    connected = manager.rooms.get("/", {}).get(None, {})
    return {
        "rooms": {ns: {name(room): {name(sid): eio for sid, eio in members.items()} for room, members in rooms.items()}
                  for ns, rooms in manager.rooms.items()},
        "callbacks": sorted(map(name, manager.callbacks)),
        "pending": [{ns: sorted(map(name, sids)) for ns, sids in pending.items()}
                    for pending in (manager.pending_connect, manager.pending_disconnect)],
        "rooms()": {name(sid): sorted(map(name, manager.get_rooms(sid, "/"))) for sid in connected},
    }


@settings(max_examples=300)
@given(steps)
def test_socketio_manager_disconnect_is_what_the_gateway_index_does(script: list[Step]) -> None:
    """manager.ClientManager keeps an index of each client's rooms and re-implements basic_disconnect from it,
    clearing what the library's own clears (rooms, callbacks, pending_connect, pending_disconnect): on any
    sequence of the room calls it overrides, both end in the same state, and rooms() agree."""
    gateway = ClientManager("flask-socketio", Listener(redis.Redis, ("flask-socketio",), str), redis.Redis())
    assert run(gateway, script) == run(socketio.Manager(), script)


def test_socketio_pubsub_manager_listens_through_two_backend_methods() -> None:
    """manager.ClientManager overrides _publish and _listen, the pub/sub backend's part, the public basic_*
    room methods and get_rooms; it calls no other private method of the library."""
    for name in ("_publish", "_listen", "basic_enter_room", "basic_leave_room", "basic_disconnect", "get_rooms",
                 "initialize"):
        assert callable(getattr(socketio.PubSubManager, name)), name
    with pytest.raises(NotImplementedError):
        socketio.PubSubManager()._listen()


def test_socketio_pubsub_task_acts_on_what_listen_yields_and_ends_quietly_on_greenlet_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """manager.ClientManager._listen yields queue dicts to python-socketio's listening task, which hands each
    to its handler by method and skips its own host's, and raises GreenletExit once the listener stopped:
    the task must let it through without logging (it logs an error when _listen returns)."""
    handled: list[dict[str, Any]] = []

    class Backend(socketio.PubSubManager):  # type: ignore[misc]
        def _listen(self) -> Any:
            yield {"method": "close_room", "room": "balance_4", "namespace": "/", "host_id": "elsewhere"}
            yield {"method": "close_room", "room": "balance_5", "namespace": "/", "host_id": self.host_id}
            raise gevent.GreenletExit

        def _handle_close_room(self, message: dict[str, Any]) -> None:
            handled.append(message)

    backend = Backend(channel="flask-socketio")
    backend.set_server(a_server())
    with pytest.raises(gevent.GreenletExit):
        backend._thread()
    assert [message["room"] for message in handled] == ["balance_4"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_queue_emit_carries_its_data_as_a_one_element_list() -> None:
    """The wire shape of Flask-SocketIO queue emits (changed upstream in December 2025): protocol.queue_emit_args
    reads a one-element list as the emit's one argument (manager.ClientManager hands emits to the fan-out)."""
    published: list[dict[str, Any]] = []

    class Capture(socketio.PubSubManager):  # type: ignore[misc]
        def _publish(self, data: dict[str, Any]) -> None:
            published.append(data)

    manager = Capture(channel="flask-socketio", write_only=True)
    manager.emit("balance", {"usd": "1"}, namespace="/", room="balance_4")
    manager.emit("pair", ({"usd": "1"}, 2), namespace="/", room="balance_4")
    single, pair = published
    assert single["method"] == "emit" and single["room"] == "balance_4" and single["event"] == "balance"
    assert single["data"] == [{"usd": "1"}] and protocol.queue_emit_args(single["data"]) == [{"usd": "1"}]
    assert protocol.queue_emit_args(pair["data"]) == [{"usd": "1"}, 2]


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


# python-engineio's WebSocket driver, which engine.Driver replaces for the gateway's WebSocket


def test_engineio_hands_a_websocket_to_the_driver_of_its_async_mode_with_the_sessions_bound_handler() -> None:
    """engine.send_directly replaces Server._async["websocket"] (a copy of the mode's drivers); engine.Driver
    reads handler.__self__ as the session and falls back to python-engineio's gevent WebSocketWSGI(handler,
    server); the session's OPEN packet waits in Socket.queue until then."""
    source = inspect.getsource(eio_socket.Socket._upgrade_websocket)
    assert "self.server._async['websocket'](" in source and "self._websocket_handler, self.server)" in source
    eio = engineio.Server(async_mode="gevent")
    assert "websocket" in eio._async and eio._async is eio_gevent._async
    assert parameters(eio_gevent.WebSocketWSGI.__init__) == ["self", "handler", "server"]
    connection = eio_socket.Socket(eio, "sid")
    assert connection.connected is False and connection.upgraded is False
    assert connection.queue.empty() and callable(connection.queue.get_nowait)


def test_engineio_forgets_a_websocket_session_once_its_handler_returned_closed() -> None:
    """engine.DirectSocket.serve returns once closed; python-engineio then drops the session from
    Server.sockets, as for its own driver."""
    source = inspect.getsource(engineio.Server._handle_connect)
    assert "ret = s.handle_get_request(environ, start_response)" in source
    assert "if s.closed and sid in self.sockets:" in source


def test_engineio_socket_parts_a_direct_session_keeps() -> None:
    """engine.DirectSocket keeps Socket.receive, check_ping_timeout and the disconnect event of close(), and
    python-engineio's reasons."""
    eio = engineio.Server(async_mode="threading")
    connection = eio_socket.Socket(eio, "sid")
    assert connection.check_ping_timeout() is True
    assert parameters(connection.receive) == ["pkt"]
    assert "'disconnect', self.sid" in inspect.getsource(eio_socket.Socket.close)
    assert eio.reason.TRANSPORT_CLOSE and eio.reason.SERVER_DISCONNECT


# gevent: the outbox's non-blocking writes


def test_a_gevent_socket_send_with_no_timeout_raises_instead_of_waiting() -> None:
    """websocket.Outbox calls socket.send(data, 0, 0.0) and waits for writability with hub.loop.io(fd, 2)."""
    ours, theirs = gevent.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):
            ours.send(b"x" * 65536, 0, 0.0)
    watcher = gevent.get_hub().loop.io(ours.fileno(), 2)
    watcher.stop()
    ours.close()
    theirs.close()


def test_socketio_keeps_each_sessions_environ_by_item_assignment() -> None:
    """engine.keep_slim_environs relies on python-socketio setting Server.environ[eio_sid] item by item (so that
    SlimEnvirons.__setitem__ sees each) and deleting it as the session ends."""
    assert "self.environ[eio_sid] = environ" in inspect.getsource(socketio.Server._handle_eio_connect)
    assert "del self.environ[eio_sid]" in inspect.getsource(socketio.Server._handle_eio_disconnect)


# gateway.listener.PubSubReader reads the pub/sub connection's socket itself; redis-py sends the commands.


class _SendOnly:
    """A connection that records what is sent and fails any read."""

    db, host, port = 0, "127.0.0.1", 1

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def should_reconnect(self) -> bool:
        return False

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.sent.append(args)

    def can_read(self, *args: Any, **kwargs: Any) -> bool:
        raise AssertionError("redis-py read from a connection the gateway reads")

    read_response = can_read


def test_redis_pubsub_sends_subscribe_unsubscribe_and_ping_without_reading_once_subscribed() -> None:
    pubsub = redis.Redis(host="127.0.0.1", port=1).pubsub()
    connection = _SendOnly()
    connection.retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)  # type: ignore[attr-defined]
    pubsub.connection = connection
    pubsub.subscribe("queue")
    assert pubsub.subscribed, "subscribe marks the pub/sub subscribed itself, with no reply read"
    pubsub.subscribe("u:1")
    pubsub.unsubscribe("u:1")
    pubsub.ping()
    assert connection.sent == [("SUBSCRIBE", "queue"), ("SUBSCRIBE", "u:1"), ("UNSUBSCRIBE", "u:1"), ("PING",)]


def test_redis_connection_parts_the_pubsub_reader_reads() -> None:
    connection = redis.Connection(host="127.0.0.1", port=1, socket_timeout=5.0)
    assert connection._sock is None and connection.socket_timeout == 5.0
    parser = connection._parser
    assert not isinstance(parser, _HiredisParser), "hiredis would hold what it read where the gateway cannot see"
    assert callable(getattr(SocketBuffer, "unread_bytes", None))


def test_prometheus_histogram_observed_in_one_go_reads_as_observed_one_by_one() -> None:
    """gateway.metrics.observe_all writes a histogram's buckets and sum itself."""
    registry = CollectorRegistry()
    one_by_one = Histogram("one_by_one", "", buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)
    in_one_go = Histogram("in_one_go", "", buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)
    amounts = [0.0, 0.001, 0.0011, 0.05, 0.1, 0.5, 1.0, 3.0, 1e9]
    for amount in amounts:
        one_by_one.observe(amount)
    observe_all(in_one_go, amounts)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name.replace(name, ""), s.labels, s.value) for metric in registry.collect() if metric.name == name
                for s in metric.samples if not s.name.endswith("_created")]

    assert samples("in_one_go") == samples("one_by_one")
