"""One worker against hostile and flaky clients, over raw sockets and raw frames.

Each test plays a client that does something the protocol does not allow, or
leaves at a bad moment, and checks what an operator would: the worker is the
same process afterwards, an honest client of the same worker still gets its
updates, the log has no traceback and nothing at WARNING or above, the
refusal is counted by its reason, and nothing of the connection stays in
Redis or in the worker's sessions.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import redis
import socketio

from gateway import protocol
from tests.integration.edge import (
    AUTH_TIMEOUT,
    MAX_MESSAGE,
    PER_USER,
    REFUSED_LOG,
    authenticated,
    connected,
    errors,
    no_sessions_but,
    raw,
)
from tests.integration.rawws import CONTINUATION, frame
from tests.integration.support import (
    Client,
    GatewayProcess,
    RedisServer,
    connection_keys,
    metric,
    rss_bytes,
    unique_user,
    wait_for,
)

CORPUS = json.loads((Path(__file__).parents[1] / "hostile_packets.json").read_text())


# The handshake, cut at every stage.


@pytest.mark.parametrize("stage", ["request_line", "headers", "upgrade_sent", "websocket_open", "connect_sent",
                                   "subscribed"])
@pytest.mark.parametrize("ending", ["reset", "close"])
def test_a_client_leaving_at_any_stage_leaves_no_trace(
    hostile: GatewayProcess, witness: Client, redis_client: redis.Redis, stage: str, ending: str
) -> None:
    user = unique_user()
    client = raw(hostile)
    request = client.upgrade_request()
    if stage == "request_line":
        client.send(request[:9])
    elif stage == "headers":
        client.send(request[:len(request) // 2])
    elif stage == "upgrade_sent":
        client.send(request)
    else:
        client.open_websocket()
        if stage in ("connect_sent", "subscribed"):
            client.send_text("40" + json.dumps({"token": hostile.token(user)}))
        if stage == "subscribed":
            assert client.read_message().startswith(b"40")
            client.send_text('420["subscribe",{"topics":["balance","pnl"]}]')
            assert client.read_message().startswith(b"430")
    getattr(client, ending)()
    no_sessions_but(hostile, 1)
    wait_for(lambda: not redis_client.smembers(f"{hostile.config.key_prefix}:user:{user}")
             and not redis_client.pubsub_numsub(f"{hostile.config.key_prefix}:u:{user}")[0][1],
             5, "the user's subscriptions and channel gone")


# Frames judged on their header.


def test_a_declared_huge_frame_is_refused_before_its_payload(hostile: GatewayProcess, witness: Client) -> None:
    before = errors(hostile, "frame_too_large")
    client = connected(hostile)
    client.send(frame(b"", length=256 * 1024 * 1024)[:14])  # header and mask only: 256 MiB announced
    assert client.close_code() == 1009
    assert client.ended()
    wait_for(lambda: errors(hostile, "frame_too_large") == before + 1, 5, "frame_too_large counted")
    no_sessions_but(hostile, 1)


def test_clients_streaming_huge_frames_cost_the_worker_nothing(hostile: GatewayProcess, witness: Client) -> None:
    (pid,) = hostile.worker_pids()
    before = rss_bytes(pid)
    junk = bytes(1024 * 1024)
    for _ in range(20):
        client = connected(hostile)
        client.send(frame(b"", length=64 * 1024 * 1024)[:14])
        try:
            client.send(junk)  # what it would buffer if the payload were read before the header was judged
        except ConnectionError:
            pass  # refused while still sending
        assert client.close_code() in (1009, None)
        client.close()
    no_sessions_but(hostile, 1)
    assert rss_bytes(pid) - before < 16 * 1024 * 1024


def test_continuation_frames_count_towards_the_message_limit(hostile: GatewayProcess, witness: Client) -> None:
    client = connected(hostile)
    part = "x" * 1000
    client.send(frame("4" + part, fin=False))
    for _ in range(4):
        client.send(frame(part, CONTINUATION, fin=False))
    assert client.close_code() == 1009


def test_a_message_at_the_limit_is_read_and_one_byte_more_is_not(hostile: GatewayProcess, witness: Client) -> None:
    head, tail = '421["subscribe",{"topics":["balance"],"pad":"', '"}]'
    packet = head + "x" * (MAX_MESSAGE - len(head) - len(tail)) + tail
    client = authenticated(hostile, unique_user())
    client.send_text(packet)
    ack = json.loads(client.read_message()[3:])
    assert ack[0]["ok"] is True
    client.send_text(packet.replace("pad", "padx"))
    assert client.close_code() == 1009


@pytest.mark.parametrize(("data", "code", "reason"), [
    (frame("40", mask=False), 1002, "unmasked_frame"),
    (frame("40", rsv=4), 1002, "bad_frame"),
    (frame("40", 0x3), 1002, "bad_frame"),
    (frame(b"\x01\x02", 0x2), 1003, "binary"),
    (frame(b"4\xff\xfe"), 1007, "invalid_utf8"),
    (frame("x" * 200, 0x9), 1002, "bad_frame"),
    (frame("", CONTINUATION), 1002, "bad_frame"),
    (frame(""), 1008, "bad_packet"),
    (frame("bAQID"), 1003, "binary"),
])
def test_a_frame_the_protocol_forbids_closes_with_its_code(
    hostile: GatewayProcess, witness: Client, data: bytes, code: int, reason: str
) -> None:
    before = errors(hostile, reason)
    client = connected(hostile)
    client.send(data)
    assert client.close_code() == code
    assert client.ended()
    wait_for(lambda: errors(hostile, reason) >= before + 1, 5, f"{reason} counted")


# Socket.IO packets, before and after the CONNECT.


@pytest.mark.parametrize("case", CORPUS["socketio_refused"], ids=lambda c: repr(c["packet"][:24]))
@pytest.mark.parametrize("when", ["before_connect", "after_connect"])
def test_a_malformed_packet_closes_the_connection_quietly(
    hostile: GatewayProcess, witness: Client, redis_client: redis.Redis, case: dict[str, str], when: str
) -> None:
    user = unique_user()
    client = authenticated(hostile, user) if when == "after_connect" else connected(hostile)
    packet = "4" + case["packet"]
    client.send_text(packet)
    assert client.close_code() == (1009 if len(packet.encode()) > MAX_MESSAGE else 1008)
    assert client.ended()
    no_sessions_but(hostile, 1)
    wait_for(lambda: not redis_client.smembers(f"{hostile.config.key_prefix}:conns:{user}"), 5, "connection released")


def test_an_event_before_connect_is_refused(hostile: GatewayProcess, witness: Client) -> None:
    before = errors(hostile, "not_connected")
    client = connected(hostile)
    client.send_text('42["subscribe",{"topics":["balance"]}]')
    assert client.close_code() == 1008
    assert client.ended()
    wait_for(lambda: errors(hostile, "not_connected") == before + 1, 5, "not_connected counted")


# The CONNECT and its token.


@pytest.mark.parametrize(("auth", "reason"), [
    (None, "missing_token"),
    ({}, "missing_token"),
    ({"token": None}, "missing_token"),
    ({"token": 7}, "missing_token"),
    ({"token": ["a"]}, "missing_token"),
    ({"token": {"a": 1}}, "missing_token"),
    ({"token": "x.y.z"}, "invalid_token"),
    ({"token": "\ud800"}, "invalid_token"),
    ({"token": "é" * 10}, "invalid_token"),
    ({"token": "a" * 3000}, "invalid_token"),
])
def test_every_refused_connect_gets_its_reason_and_ends_the_session(
    hostile: GatewayProcess, witness: Client, auth: object, reason: str
) -> None:
    client = connected(hostile)
    payload = "" if auth is None else json.dumps(auth)
    client.send_text("40" + payload)
    answer = client.read_message()
    assert answer.startswith(b"44"), answer
    assert json.loads(answer[2:])["data"]["reason"] == reason
    assert client.ended()
    no_sessions_but(hostile, 1)


def test_a_client_library_refused_at_connect_leaves_at_once(hostile: GatewayProcess, witness: Client) -> None:
    """python-socketio disconnects by itself after connect_error; the gateway leaves it the time to, instead of
    closing at the same moment (which made python-engineio's client wait 90 s for its own writer)."""
    for _ in range(20):
        refused = Client(hostile.url, "x.y.z")
        with pytest.raises(socketio.exceptions.ConnectionError):
            refused.connect()
        assert refused.refused[0]["reason"] == "invalid_token"
    no_sessions_but(hostile, 1)


def test_many_surrogate_tokens_leave_nothing_behind(hostile: GatewayProcess, witness: Client) -> None:
    before = metric(hostile, "gateway_connect_refused_total", reason="invalid_token")
    for _ in range(30):
        client = connected(hostile)
        client.send_text('40{"token":"\\ud83d"}')
        assert client.read_message().startswith(b"44")
        client.close()
    wait_for(lambda: metric(hostile, "gateway_connect_refused_total", reason="invalid_token") == before + 30,
             5, "each refusal counted")
    no_sessions_but(hostile, 1)


def test_a_socket_that_never_authenticates_is_closed_in_time(hostile: GatewayProcess, witness: Client) -> None:
    before = errors(hostile, "auth_timeout")
    client = connected(hostile)
    started = time.monotonic()
    assert client.ended(AUTH_TIMEOUT + 5)
    assert time.monotonic() - started >= AUTH_TIMEOUT - 0.5
    wait_for(lambda: errors(hostile, "auth_timeout") == before + 1, 5, "auth_timeout counted")
    no_sessions_but(hostile, 1)


def test_a_user_past_the_connection_cap_is_refused(hostile: GatewayProcess, witness: Client,
                                                   redis_client: redis.Redis) -> None:
    user = unique_user()
    held = [authenticated(hostile, user) for _ in range(PER_USER)]
    extra = connected(hostile)
    answer = extra.authenticate(hostile.token(user))
    assert json.loads(answer[2:])["data"]["reason"] == "too_many_connections"
    assert extra.ended()
    held.pop().close()
    # One left: there is room for one more.
    wait_for(lambda: redis_client.scard(f"{hostile.config.key_prefix}:conns:{user}") == PER_USER - 1, 5,
             "the closed connection released")
    held.append(authenticated(hostile, user))
    for client in held:
        client.close()
    wait_for(lambda: not redis_client.exists(f"{hostile.config.key_prefix}:conns:{user}"), 5,
             "every connection released")


# Floods.


def test_an_event_flood_is_cut_and_the_neighbour_still_served(hostile: GatewayProcess, witness: Client) -> None:
    before = errors(hostile, "flood")
    client = authenticated(hostile, unique_user())
    burst = b"".join(frame('42["subscribe",{"topics":["balance"]}]') for _ in range(2000))
    try:
        client.send(burst)
    except ConnectionError:
        pass  # cut while still sending
    assert client.close_code(10) in (1008, None)
    assert client.ended()
    wait_for(lambda: errors(hostile, "flood") == before + 1, 5, "flood counted")


def test_two_subscribes_in_a_row_then_a_reset_leak_no_channel(
    hostile: GatewayProcess, witness: Client, redis_client: redis.Redis
) -> None:
    user = unique_user()
    client = authenticated(hostile, user)
    client.send(frame('420["subscribe",{"topics":["balance"]}]') + frame('421["subscribe",{"topics":["pnl"]}]'))
    assert client.read_message().startswith(b"430")
    assert client.read_message().startswith(b"431")
    channel = f"{hostile.config.key_prefix}:u:{user}"
    assert redis_client.pubsub_numsub(channel)[0][1] == 1
    client.reset()
    wait_for(lambda: redis_client.pubsub_numsub(channel)[0][1] == 0, 5, "the user's channel unsubscribed")
    assert not any(user in key for key in connection_keys(redis_client, hostile.config.key_prefix))


# Queue messages from other processes.


def test_seed_style_emits_reach_the_room_every_time_unchanged(
    hostile: GatewayProcess, witness: Client, redis_server: RedisServer
) -> None:
    from flask_socketio import SocketIO

    user = unique_user()
    client = hostile.client(user).connect()
    client.subscribe("balance")
    seed = SocketIO(message_queue=redis_server.url)
    payload = {"seq": 7, "cash": "10.00"}
    for _ in range(3):
        seed.emit("balance", payload, to=f"balance_{user}")
    got = client.wait_events("balance", 3)
    assert got == [payload, payload, payload]
    client.close()


@pytest.mark.parametrize("method", ["enter_room", "leave_room", "close_room", "disconnect", "broadcast", "bad_room"])
def test_queue_methods_not_allowed_are_refused_and_counted(
    hostile: GatewayProcess, witness: Client, redis_client: redis.Redis, method: str
) -> None:
    sid, room = witness.sio.get_sid(), f"balance_{witness.user}"
    message: dict[str, object] = {
        "enter_room": {"sid": sid, "room": f"balance_{unique_user()}"},
        "leave_room": {"sid": sid, "room": room},
        "close_room": {"room": room},
        "disconnect": {"sid": sid},
        "broadcast": {"event": "balance", "data": {"cash": "0"}, "room": None, "skip_sid": None, "callback": None},
        "bad_room": {"event": "balance", "data": {"cash": "0"}, "room": witness.sio.get_sid(), "callback": None},
    }[method]
    emit = method in ("broadcast", "bad_room")
    message.update(method="emit" if emit else method, namespace="/", host_id="a-backend-job")
    reason = method
    before = metric(hostile, "gateway_queue_refused_total", reason=reason)
    # What any process with access to Redis can publish on Flask-SocketIO's channel.
    redis_client.publish(protocol.QUEUE_CHANNEL, json.dumps(message))
    wait_for(lambda: metric(hostile, "gateway_queue_refused_total", reason=reason) == before + 1, 5,
             f"{method} refused")
    assert witness.sio.connected
    assert "balance" not in witness.events
    warnings = [line for line in hostile.log().splitlines() if REFUSED_LOG in line and f"({reason}:" in line]
    assert len(warnings) == 1, warnings


# Fuzzing over the wire.


def mutants(count: int, seed: int = 10) -> list[str]:
    """Packets of the corpus cut, spliced, repeated and sprinkled with bytes, the same on every run."""
    rng = random.Random(seed)
    seeds = [case["packet"] for case in CORPUS["socketio_refused"]] + CORPUS["socketio_accepted"]
    alphabet = '[]{}",:0123456789-/\\ \x00\ud800\u00e9abcnultrue'
    found = []
    for _ in range(count):
        packet = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            cut = rng.randint(0, len(packet))
            action = rng.randrange(4)
            if action == 0:
                packet = packet[:cut]
            elif action == 1:
                packet = packet[:cut] + rng.choice(alphabet) + packet[cut:]
            elif action == 2:
                packet = packet[:cut] + rng.choice(seeds) + packet[cut:]
            else:
                packet = packet[:cut] + packet[cut:cut + 8] * rng.randint(2, 50) + packet[cut:]
        found.append(packet[:MAX_MESSAGE - 8])
    return found


def test_fuzzed_packets_after_connect_never_hurt_the_worker(hostile: GatewayProcess, witness: Client,
                                                            redis_client: redis.Redis) -> None:
    users = []
    for packet in mutants(150):
        user = unique_user()
        users.append(user)
        client = authenticated(hostile, user)
        # Lone surrogates cannot travel as UTF-8: they go as the escapes a JSON encoder writes.
        client.send(frame(("4" + packet).encode("utf-8", "backslashreplace")))
        client.close()
    no_sessions_but(hostile, 1)
    wait_for(lambda: not any(redis_client.exists(f"{hostile.config.key_prefix}:conns:{user}") for user in users), 5,
             "every fuzzed connection released")
