"""Refreshes and the token's end on stand-in connections and server: what the client is told and what changes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.auth import TokenVerifier, mint_token
from gateway.config import Config
from gateway.control import SessionControl
from gateway.errors import BadRequest
from gateway.events import Connection

CONFIG = Config.from_env({"GATEWAY_JWT_SECRET": "s" * 40}, server=False)


class Revocations:
    """Stands in for the registry's revocations: users whose tokens issued before a time are refused."""

    def __init__(self, **before: float) -> None:
        self.before = before

    def is_revoked(self, user: str, issued_at: float | None) -> bool:
        return user in self.before and (issued_at is None or issued_at < self.before[user])


class Server:
    """Records what the control asks of the Socket.IO server."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def emit(self, event: str, data: Any, **kwargs: Any) -> None:
        self.calls.append(("emit", event, data, kwargs["to"], kwargs["ignore_queue"]))

    def leave_room(self, sid: str, room: str, namespace: str) -> None:
        self.calls.append(("leave_room", sid, room))

    def start_background_task(self, target: Any, *args: Any) -> None:
        self.calls.append(("task", target.__name__, *args))


def control(**revoked: float) -> tuple[SessionControl, dict[str, Connection], Server]:
    connections = {"s1": Connection("alice", True, issued_at=time.time())}
    connections["s1"].topics.update({"balance", "pnl"})
    ctl = SessionControl(connections, Revocations(**revoked), TokenVerifier(CONFIG), 60.0, 5.0)  # type: ignore[arg-type]
    server = Server()
    ctl.attach(server)  # type: ignore[arg-type]
    ctl.lifetimes.track("s1", 1000.0)
    return ctl, connections, server


def test_a_refresh_with_a_new_token_of_the_same_user_moves_the_end() -> None:
    ctl, connections, _ = control()
    token = mint_token(CONFIG, "alice", 3600)
    ack = ctl.refresh("s1", connections["s1"], {"token": token})
    assert ack["ok"] is True and abs(ack["exp"] - (time.time() + 3600)) < 5 and isinstance(ack["exp"], int)
    assert ctl.lifetimes.exp("s1") == ack["exp"]


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (lambda: mint_token(CONFIG, "bob", 3600), "wrong_user"),
        (lambda: mint_token(CONFIG, "alice", -60), "expired_token"),
        (lambda: "not a jwt", "invalid_token"),
        (lambda: None, "invalid_token"),
        (lambda: mint_token(CONFIG, "alice", 3600).replace(".", "!", 1), "invalid_token"),
    ],
    ids=["another user", "expired", "not a JWT", "none", "tampered"],
)
def test_a_refresh_that_may_not_extend_the_connection_is_refused_and_changes_nothing(token: Any, error: str) -> None:
    ctl, connections, _ = control()
    with pytest.raises(BadRequest) as refused:
        ctl.refresh("s1", connections["s1"], {"token": token()})
    assert refused.value.code == error and refused.value.message
    assert ctl.lifetimes.exp("s1") == 1000.0


def test_a_refresh_with_a_revoked_token_is_refused() -> None:
    ctl, connections, _ = control(alice=time.time() + 60)
    with pytest.raises(BadRequest) as refused:
        ctl.refresh("s1", connections["s1"], {"token": mint_token(CONFIG, "alice", 3600)})
    assert refused.value.code == "revoked_token" and ctl.lifetimes.exp("s1") == 1000.0


def test_the_client_is_told_then_leaves_its_rooms_then_is_ended() -> None:
    ctl, connections, server = control()
    ctl.lifetimes.run_due(940.0)
    assert server.calls == [("emit", "token_expiring", {"exp": 1000}, "s1", True)]
    ctl.lifetimes.run_due(1000.0)
    assert connections["s1"].expired
    assert sorted(server.calls[1:]) == [("leave_room", "s1", "balance_alice"), ("leave_room", "s1", "pnl_alice")]
    ctl.lifetimes.run_due(1005.0)
    assert server.calls[-1] == ("task", "_expire", "s1", "alice")


def test_a_connection_gone_before_its_steps_is_not_touched() -> None:
    ctl, connections, server = control()
    del connections["s1"]
    ctl.lifetimes.run_due(2000.0)
    assert server.calls == []
