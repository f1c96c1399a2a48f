"""The handlers end to end (gateway.events): real gunicorn (2 gevent-websocket workers), real Redis, real clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import requests
import socketio
from flask_socketio import SocketIO

from gateway.publisher import Publisher
from tests.integration.support import (
    REPO,
    SECRET,
    Client,
    GatewayProcess,
    metric,
    refusal_of,
    unclean_lines,
    unique_user,
    wait_for,
)

TOPICS = ("balance", "positions", "pnl", "orders")
MALFORMED = json.loads((Path(__file__).parents[1] / "malformed_subscribe.json").read_text())


@pytest.fixture
def publisher(gateway: GatewayProcess) -> Publisher:
    with Publisher(config=gateway.config) as pub:
        yield pub


def registry_workers(gateway: GatewayProcess) -> set[str]:
    """Worker ids that hold at least one connection's records."""
    client = redis.Redis.from_url(gateway.config.redis_url)
    prefix = gateway.config.key_prefix
    return {key.decode().split(":worker:", 1)[1] for key in client.scan_iter(f"{prefix}:worker:*")}


def connected_on_both_workers(gateway: GatewayProcess, users: list[str]) -> list[Client]:
    """Connect two devices per user, then more, until both workers hold connections."""
    clients = []
    for user in users:
        for _ in range(2):
            client = gateway.client(user).connect()
            client.subscribe(*TOPICS)
            clients.append(client)
    extra = 0
    while len(registry_workers(gateway)) < 2:
        assert extra < 40, "every connection landed on one worker"
        client = gateway.client(users[extra % len(users)]).connect()
        client.subscribe(*TOPICS)
        clients.append(client)
        extra += 1
    return clients


def test_each_client_gets_exactly_its_own_updates_in_seq_order(gateway: GatewayProcess, publisher: Publisher) -> None:
    users = [unique_user() for _ in range(10)]
    clients = connected_on_both_workers(gateway, users)
    per_topic = 25

    def publish_all(half: list[str]) -> None:
        for n in range(1, per_topic + 1):
            for user in half:
                for topic in TOPICS:
                    assert publisher.publish(user, topic, {"n": n, "user": user}) == n

    threads = [threading.Thread(target=publish_all, args=(users[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for client in clients:
        for topic in TOPICS:
            updates = client.wait_events(topic, per_topic)
            assert [u["seq"] for u in updates] == list(range(1, per_topic + 1))
            assert {u["user_id"] for u in updates} == {client.user}
            assert [u["data"]["n"] for u in updates] == list(range(1, per_topic + 1))
            assert all(u["topic"] == topic and isinstance(u["ts"], float) for u in updates)
    for client in clients:
        client.close()
    assert unclean_lines(gateway.log()) == []


def test_seed_style_flask_socketio_emit_reaches_the_room(gateway: GatewayProcess) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("balance")
    SocketIO(message_queue=gateway.config.redis_url).emit("balance", {"usd": "7.00"}, to=f"balance_{user}")
    assert client.wait_events("balance", 1) == [{"usd": "7.00"}]
    client.close()


def test_garbage_on_a_user_channel_is_skipped_and_updates_keep_flowing(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(GATEWAY_WORKERS="1")
    publisher = Publisher(config=gateway.config)
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("balance")
    channel = f"{gateway.config.key_prefix}:u:{user}"
    queue = redis.Redis.from_url(gateway.config.redis_url)
    garbage = [b"u1 balance", b"u1 balance " + user.encode() + b" soon 1\n{}", b"{not json", b'{"method": "nope"}']
    for message in garbage:
        assert queue.publish(channel, message) >= 1
    assert publisher.publish(user, "balance", {"usd": "1"}) == 1
    (update,) = client.wait_events("balance", 1)
    assert (update["seq"], update["data"]) == (1, {"usd": "1"})
    wait_for(lambda: gateway.log().count("skipped a malformed update message") >= 2, 5, "malformed update warnings")
    assert "Traceback" not in gateway.log()
    queue.close()
    publisher.close()
    client.close()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing_token"),
        ("not-a-jwt", "invalid_token"),
        ("expired", "expired_token"),
        ("other-secret", "invalid_token"),
    ],
)
def test_bad_tokens_are_refused_with_the_contract_reason(
    gateway: GatewayProcess, token: str | None, reason: str
) -> None:
    import jwt

    if token == "expired":
        token = gateway.token("4", ttl=-10)
    elif token == "other-secret":
        token = jwt.encode({"sub": "4", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
    client = Client(gateway.url, token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect()
    assert client.refused == [{"message": "unauthorized", "reason": reason, "data": {"reason": reason}}]


def test_token_in_header_or_query_is_accepted(gateway: GatewayProcess) -> None:
    user = unique_user()
    token = gateway.token(user)
    by_header = Client(gateway.url, None).connect(headers={"Authorization": f"Bearer {token}"})
    by_query = Client(f"{gateway.url}?token={token}", None).connect()
    for client in (by_header, by_query):
        assert client.subscribe("pnl")["topics"] == {"pnl": {"seq": 0}}
        client.close()


@pytest.mark.parametrize("case", MALFORMED, ids=[case["name"] for case in MALFORMED])
def test_malformed_subscribe_gets_error_ack_and_connection_stays_up(
    gateway: GatewayProcess, publisher: Publisher, case: dict[str, object]
) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    ack = client.call("subscribe", case["payload"])
    assert ack["ok"] is False and ack["error"] == case["error"], ack
    assert isinstance(ack["message"], str) and ack["message"]
    client.subscribe("orders")
    publisher.publish(user, "orders", {"id": 1})
    assert client.wait_events("orders", 1)[0]["seq"] == 1
    client.close()


def test_subscribe_sends_the_latest_update_as_snapshot_and_reports_seq(
    gateway: GatewayProcess, publisher: Publisher
) -> None:
    user = unique_user()
    for n in range(1, 4):
        publisher.publish(user, "balance", {"usd": str(n)})
    client = gateway.client(user).connect()
    ack = client.call("subscribe", {"topics": ["balance", "pnl", "foo"]})
    assert ack == {
        "ok": True,
        "topics": {"balance": {"seq": 3, "snapshot": True}, "pnl": {"seq": 0}},
        "rejected": {"foo": "unknown_topic"},
    }
    (snapshot,) = client.wait_events("balance", 1)
    assert snapshot["seq"] == 3 and snapshot["snapshot"] is True and snapshot["data"] == {"usd": "3"}
    assert client.call("subscribe", "orders")["topics"] == {"orders": {"seq": 0}}
    publisher.publish(user, "balance", {"usd": "4"})
    assert [u["seq"] for u in client.wait_events("balance", 2)] == [3, 4]
    client.close()


def test_no_payload_can_reach_another_users_updates(gateway: GatewayProcess, publisher: Publisher) -> None:
    me, victim = unique_user(), unique_user()
    client = gateway.client(me).connect()
    ack = client.call("subscribe", {"topics": ["balance"], "user_id": victim, "room": f"balance_{victim}"})
    assert ack["ok"] is True
    assert client.call("subscribe", f"balance_{victim}")["rejected"] == {f"balance_{victim}": "unknown_topic"}
    publisher.publish(victim, "balance", {"usd": "secret"})
    publisher.publish(me, "balance", {"usd": "mine"})
    assert [u["data"] for u in client.wait_events("balance", 1)] == [{"usd": "mine"}]
    assert publisher.user_topics(victim) == set()
    client.close()


def test_oversized_message_is_refused_and_leaves_nothing(gateway: GatewayProcess, publisher: Publisher) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe("balance")
    assert publisher.is_subscribed(user, "balance")
    too_big = {"topics": ["balance"], "pad": "x" * (gateway.config.max_message_bytes + 1)}
    client.sio.emit("subscribe", too_big)
    wait_for(lambda: not client.sio.connected, 10, "server closes the connection")
    wait_for(lambda: not publisher.is_subscribed(user, "balance"), 2, "records removed")
    assert unclean_lines(gateway.log()) == []


def test_unsubscribe_stops_updates_and_clears_records(gateway: GatewayProcess, publisher: Publisher) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    client.subscribe(*TOPICS)
    assert client.call("unsubscribe", {"topics": ["pnl", "foo"]}) == {"ok": True, "topics": ["pnl"]}
    assert publisher.user_topics(user) == {"balance", "positions", "orders"}
    assert client.call("unsubscribe", {"topics": 5})["error"] == "invalid_topics"
    assert client.call("unsubscribe") == {"ok": True, "topics": ["balance", "orders", "positions"]}
    assert publisher.user_topics(user) == set()
    publisher.publish(user, "pnl", {"day": "1"})
    client.subscribe("orders")
    publisher.publish(user, "orders", {"id": 1})
    client.wait_events("orders", 1)
    assert client.events["pnl"] == []
    client.close()


def test_user_on_two_devices_keeps_topic_until_the_last_leaves(gateway: GatewayProcess, publisher: Publisher) -> None:
    user = unique_user()
    phone, laptop = gateway.client(user).connect(), gateway.client(user).connect()
    phone.subscribe("balance", "pnl")
    laptop.subscribe("balance")
    assert publisher.subscribers("balance") >= {user}
    phone.close()
    wait_for(lambda: publisher.user_topics(user) == {"balance"}, 1, "phone's pnl released, balance kept")
    publisher.publish(user, "balance", {"usd": "2"})
    assert laptop.wait_events("balance", 1)[0]["data"] == {"usd": "2"}
    laptop.close()
    wait_for(lambda: publisher.user_topics(user) == set(), 1, "records removed within 1 s of the disconnect")
    assert not publisher.is_subscribed(user, "balance")


def test_clients_killed_during_a_push_flood_leave_clean_logs_and_no_records(
    gateway: GatewayProcess, publisher: Publisher
) -> None:
    """200 clients; half are killed (SIGKILL) while updates flood all of them."""
    doomed = [unique_user() for _ in range(100)]
    survivors = [gateway.client(unique_user()).connect() for _ in range(100)]
    for client in survivors:
        client.subscribe("balance")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.doomed_clients", gateway.url, *[gateway.token(u) for u in doomed]],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    stop = threading.Event()
    rounds = {"done": 0}

    def flood() -> None:
        while not stop.is_set():
            for user in doomed:
                publisher.publish(user, "balance", {"pad": "x" * 4000})
            for client in survivors:
                publisher.publish(client.user, "balance", {"round": rounds["done"]})
            rounds["done"] += 1

    pusher = threading.Thread(target=flood)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "subscribed", "doomed clients did not subscribe"
        assert all(publisher.is_subscribed(u, "balance") for u in doomed)
        pusher.start()
        wait_for(lambda: rounds["done"] >= 3, 60, "flood under way")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        wait_for(lambda: not any(publisher.is_subscribed(u, "balance") for u in doomed), 70, "doomed records removed")
        wait_for(lambda: rounds["done"] >= 6, 60, "flood goes on after the kill")
    finally:
        stop.set()
        if pusher.is_alive():
            pusher.join(60)
        process.kill()
        process.wait()
    for client in survivors:
        received = client.wait_events("balance", rounds["done"], seconds=30)
        assert [u["seq"] for u in received] == list(range(1, rounds["done"] + 1))
        assert [u["data"]["round"] for u in received] == list(range(rounds["done"]))
        client.close()
    assert unclean_lines(gateway.log()) == []


def test_long_polling_is_refused_with_several_workers(gateway: GatewayProcess) -> None:
    response = requests.get(f"{gateway.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert response.status_code == 400


def test_gunicorn_opens_no_control_socket_under_home(gateway: GatewayProcess) -> None:
    home = Path(gateway.env["HOME"])
    assert home.is_dir() and not (home / ".gunicorn").exists()


# A kick (Publisher.disconnect_user, gateway kick): every connection of one user, on every worker of every instance.


def server_disconnects(client: Client) -> list[str]:
    """The reasons python-socketio gives for each disconnect of ``client``, recorded from now on."""
    reasons: list[str] = []
    client.sio.on("disconnect", lambda reason=None: reasons.append(str(reason)))
    return reasons


def test_a_kick_closes_every_connection_of_its_user_on_every_worker_of_every_instance(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    first, second = (start_gateway(GATEWAY_MAX_CONNECTIONS_PER_USER="100") for _ in range(2))
    user, bystander_user = unique_user(), unique_user()
    clients: list[Client] = []
    while len(registry_workers(first)) < 4:  # the kernel picks the worker: connect until all four hold one
        assert len(clients) < 80, "the connections never reached every worker"
        for instance in (first, second):
            clients.append(instance.client(user).connect())
            clients[-1].subscribe("balance")
    reasons = [server_disconnects(client) for client in clients]
    bystander = first.client(bystander_user).connect()
    bystander.subscribe("balance")
    with Publisher(config=first.config) as publisher:
        assert publisher.disconnect_user(user) == 4, "every worker of both instances heard the kick"
        wait_for(lambda: not any(client.sio.connected for client in clients), 10, "every connection of the user closed")
        # ... and each client took it in its stride (gateway.client.OrderedClient handles a server's DISCONNECT
        # on its reading thread, which python-socketio would have wait for itself: a traceback, and stuck).
        wait_for(lambda: all(client.sio.eio.state == "disconnected" for client in clients), 10, "clients at rest")
        assert all(seen == [socketio.Client.reason.SERVER_DISCONNECT] for seen in reasons), reasons
        wait_for(lambda: not publisher.is_subscribed(user, "balance"), 10, "the kicked connections' records released")
        publisher.publish(bystander_user, "balance", {"usd": "1"})
        assert [update["seq"] for update in bystander.wait_events("balance", 1)] == [1], "another user is untouched"
    kicked = sum(metric(instance, "gateway_kicked_connections_total") for instance in (first, second))
    assert kicked == len(clients)
    assert bystander.sio.connected
    bystander.close()
    assert unclean_lines(first.log()) == [] and unclean_lines(second.log()) == []


def test_gateway_kick_from_the_command_line(gateway: GatewayProcess) -> None:
    user = unique_user()
    client = gateway.client(user).connect()
    reasons = server_disconnects(client)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **gateway.env}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "kick", user], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"user {user} kicked: 2 workers told"
    wait_for(lambda: not client.sio.connected, 10, "the connection closed")
    assert reasons == [socketio.Client.reason.SERVER_DISCONNECT]
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "kick", "not a user"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "USER" in refused.stderr


def test_revoked_tokens_are_refused_across_a_restart_and_tokens_issued_later_are_not(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    import jwt

    gateway = start_gateway()
    user, now = unique_user(), int(time.time())

    def token_issued(at: int) -> str:
        return jwt.encode({"sub": user, "iat": at, "exp": now + 3600}, SECRET, algorithm="HS256")

    old, later = token_issued(now - 60), token_issued(now - 10)
    client = Client(gateway.url, old, user=user).connect()
    client.subscribe("balance")
    reasons = server_disconnects(client)
    with Publisher(config=gateway.config) as publisher:
        assert publisher.revoke_tokens(user, issued_before=now - 30) == 2
        wait_for(lambda: not client.sio.connected, 10, "the user's live connection closed")
        assert reasons == [socketio.Client.reason.SERVER_DISCONNECT]
        assert refusal_of(gateway, old) == "revoked_token"
        assert refusal_of(gateway, jwt.encode({"sub": user, "exp": now + 60}, SECRET, algorithm="HS256")) \
            == "revoked_token", "a token that does not say when it was issued cannot prove it came after"
        publisher.revoke_tokens(user, issued_before=now - 50)  # an earlier time does not undo the revocation
    fresh = Client(gateway.url, later, user=user).connect()
    assert fresh.subscribe("balance")["ok"]
    fresh.close()
    gateway.stop()
    restarted = start_gateway()
    assert refusal_of(restarted, old) == "revoked_token", "the revocation outlived the gateway"
    assert metric(restarted, "gateway_connect_refused_total", reason="revoked_token") == 1
    assert unclean_lines(gateway.log()) == [] and unclean_lines(restarted.log()) == []


def test_gateway_kick_revoke_from_the_command_line(gateway: GatewayProcess) -> None:
    import jwt

    user, now = unique_user(), int(time.time())
    old = jwt.encode({"sub": user, "iat": now - 5, "exp": now + 3600}, SECRET, algorithm="HS256")
    client = Client(gateway.url, old, user=user).connect()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **gateway.env}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "kick", user, "--revoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"user {user} kicked, its tokens issued until now revoked: 2 workers told"
    wait_for(lambda: not client.sio.connected, 10, "the connection closed")
    assert refusal_of(gateway, old) == "revoked_token"


# Session lifetime: a connection lives no longer than its token.


def expiry_of(token: str) -> int:
    import jwt

    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_a_connection_is_told_before_its_token_runs_out_and_a_refresh_keeps_it(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(GATEWAY_TOKEN_REFRESH_LEAD="3", GATEWAY_JWT_LEEWAY="1")
    user = unique_user()
    first = gateway.token(user, ttl=4)
    client = Client(gateway.url, first, user=user).connect()
    client.subscribe("balance")
    reasons = server_disconnects(client)
    assert client.wait_events("token_expiring", 1, 10) == [{"exp": expiry_of(first)}]
    second = gateway.token(user, ttl=3600)
    assert client.call("refresh", {"token": second}) == {"ok": True, "exp": expiry_of(second)}
    # the first token's end and leeway pass: the clock is what this test is about
    wait_for(lambda: time.time() > expiry_of(first) + 2, 10, "past the first token's end")
    with Publisher(config=gateway.config) as publisher:
        publisher.publish(user, "balance", {"usd": "1"})
    assert [update["seq"] for update in client.wait_events("balance", 1)] == [1]
    assert client.sio.connected and reasons == []
    assert metric(gateway, "gateway_token_refreshes_total") == 1
    assert unclean_lines(gateway.log()) == []


def test_without_a_refresh_nothing_published_after_exp_arrives_and_the_connection_ends(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(GATEWAY_TOKEN_REFRESH_LEAD="1", GATEWAY_JWT_LEEWAY="1")
    user = unique_user()
    token = gateway.token(user, ttl=3)
    exp = expiry_of(token)
    client = Client(gateway.url, token, user=user).connect()
    client.subscribe("balance")
    reasons = server_disconnects(client)
    published: dict[int, float] = {}
    stop = threading.Event()

    def publish() -> None:
        with Publisher(config=gateway.config) as publisher:
            while not stop.is_set() and time.time() < exp + 3:
                at = time.time()
                published[publisher.publish(user, "balance", {"at": at})] = at
                stop.wait(0.05)

    publishing = threading.Thread(target=publish)
    publishing.start()
    try:
        wait_for(lambda: not client.sio.connected, 15, "the connection ended with its token")
    finally:
        stop.set()
        publishing.join(10)
    assert reasons == [socketio.Client.reason.SERVER_DISCONNECT]
    received = client.seqs("balance")
    assert received, "updates published before exp arrived"
    late = [seq for seq in received if published[seq] > exp + 0.1]
    assert late == [], f"published after exp and delivered: {late}"
    assert any(at > exp + 0.5 for at in published.values()), "publishing went on past exp"
    assert metric(gateway, "gateway_sessions_expired_total") == 1
    assert refusal_of(gateway, token) == "expired_token", "its next CONNECT with the same token is refused"
    assert unclean_lines(gateway.log()) == []


def test_a_refresh_with_a_token_that_may_not_extend_the_connection_changes_nothing(gateway: GatewayProcess) -> None:
    import jwt

    user, now = unique_user(), int(time.time())
    client = gateway.client(user).connect()
    revoked = jwt.encode({"sub": user, "iat": now - 60, "exp": now + 3600}, SECRET, algorithm="HS256")
    redis.Redis.from_url(gateway.config.redis_url).set(f"{gateway.config.key_prefix}:revoked:{user}", now - 30)
    for token, error in [
        (gateway.token(unique_user()), "wrong_user"),
        (gateway.token(user, ttl=-60), "expired_token"),
        ("not a jwt", "invalid_token"),
        (None, "invalid_token"),
        (revoked, "revoked_token"),
    ]:
        ack = client.call("refresh", {"token": token})
        assert (ack["ok"], ack["error"]) == (False, error) and ack["message"], ack
    assert client.subscribe("balance")["ok"], "the connection goes on as it was"
    client.close()
