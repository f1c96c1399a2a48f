"""gateway.listener.Listener against a real redis-server, without gunicorn or Socket.IO.

The listener runs in a gevent process of its own (listener_child.py), as in a
worker; the test drives it and restarts Redis under it.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import protocol
from tests.integration.support import REPO, RedisServer


class Child:
    def __init__(self, url: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.listener_child", url, prefix],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def next(self, seconds: float = 10) -> dict[str, Any]:
        try:
            return self.events.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no event from the listener in {seconds} s") from None

    def until(self, wanted: dict[str, Any], seconds: float = 10) -> list[dict[str, Any]]:
        """Events up to and including ``wanted``."""
        seen = []
        while (event := self.next(seconds)) != wanted:
            seen.append(event)
        return seen + [event]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def child(own_redis: RedisServer) -> Iterator[Child]:
    running = Child(own_redis.url, f"l{uuid.uuid4().hex[:8]}")
    yield running
    running.stop()


def prefix_of(child: Child) -> str:
    return str(child.process.args[-1])  # type: ignore[index]


def test_a_watched_users_updates_arrive_once_redis_confirmed_the_channel(child: Child, own_redis: RedisServer) -> None:
    assert child.next() == {"connect": False}
    child.send("watch 4")
    assert child.next() == {"watched": "4"}
    redis = own_redis.client()
    channel = protocol.user_channel(prefix_of(child), "4")
    assert redis.pubsub_numsub(channel)[0][1] == 1
    redis.publish(channel, "u1 balance 4 1.0 1\n{}")
    assert child.next() == {"message": "u1 balance 4 1.0 1\n{}"}
    redis.publish("flask-socketio", '{"method": "emit"}')
    assert child.next() == {"message": '{"method": "emit"}'}


def test_a_channel_is_kept_until_its_last_watcher_leaves(child: Child, own_redis: RedisServer) -> None:
    child.next()
    redis = own_redis.client()
    channel = protocol.user_channel(prefix_of(child), "4")
    for command in ("watch 4", "watch 4", "unwatch 4"):
        child.send(command)
        child.next()
    assert redis.pubsub_numsub(channel)[0][1] == 1
    child.send("unwatch 4")
    child.next()
    child.send("watch 5")  # a round trip on the same connection: the unsubscribe went before it
    child.next()
    assert redis.pubsub_numsub(channel)[0][1] == 0


def test_after_a_redis_restart_every_channel_is_back_before_reading_on(child: Child, own_redis: RedisServer) -> None:
    child.next()
    child.send("watch 4")
    child.next()
    own_redis.stop(kill=True)
    own_redis.start()
    assert child.until({"connect": True}, 20)[-1] == {"connect": True}
    redis = own_redis.client()
    channel = protocol.user_channel(prefix_of(child), "4")
    assert redis.pubsub_numsub(channel)[0][1] == 1 and redis.pubsub_numsub("flask-socketio")[0][1] == 1
    redis.publish(channel, "after the restart")
    assert child.next() == {"message": "after the restart"}


def test_a_watch_while_redis_is_away_raises_and_is_given_back(child: Child, own_redis: RedisServer) -> None:
    child.next()
    own_redis.stop(kill=True)
    child.send("watch 4")
    event = child.next(20)
    assert "error" in event, event
    own_redis.start()
    child.until({"connect": True}, 20)
    child.send("unwatch 4")  # the caller gives the failed watch back
    child.next()
    child.send("watch 6")  # confirmed on the same connection: the unsubscribe went before it
    assert child.next() == {"watched": "6"}
    assert own_redis.client().pubsub_numsub(protocol.user_channel(prefix_of(child), "4"))[0][1] == 0


def test_stop_ends_the_listener(child: Child) -> None:
    child.next()
    child.send("stop")
    assert child.next() == {"stopped": True}
    assert child.process.wait(10) == 0
