"""gateway.listener.Listener against a real redis-server, without gunicorn or Socket.IO.

The listener runs in a gevent process of its own (listener_child.py), as in a
worker; the test drives it and restarts Redis under it.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import Keys
from tests.integration.support import REPO, RedisServer, wait_for


class Child:
    def __init__(self, url: str, prefix: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.listener_child", url, prefix, *options],
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
    return str(child.process.args[4])  # type: ignore[index]


def test_a_watched_users_updates_arrive_once_redis_confirmed_the_channel(child: Child, own_redis: RedisServer) -> None:
    assert child.next() == {"connect": False}
    child.send("watch 4")
    assert child.next() == {"watched": "4"}
    redis = own_redis.client()
    channel = Keys(prefix_of(child)).channel("4")
    assert redis.pubsub_numsub(channel)[0][1] == 1
    redis.publish(channel, "u1 balance 4 1.0 1\n{}")
    assert child.next() == {"message": "u1 balance 4 1.0 1\n{}"}
    redis.publish("flask-socketio", '{"method": "emit"}')
    assert child.next() == {"message": '{"method": "emit"}'}


def test_a_channel_is_kept_until_its_last_watcher_leaves(child: Child, own_redis: RedisServer) -> None:
    child.next()
    redis = own_redis.client()
    channel = Keys(prefix_of(child)).channel("4")
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
    channel = Keys(prefix_of(child)).channel("4")
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
    assert own_redis.client().pubsub_numsub(Keys(prefix_of(child)).channel("4"))[0][1] == 0


def test_stop_ends_the_listener(child: Child) -> None:
    child.next()
    child.send("stop")
    assert child.next() == {"stopped": True}
    assert child.process.wait(10) == 0


HEALTH_SECONDS = 0.3


@pytest.fixture
def quick_health(own_redis: RedisServer) -> Iterator[Child]:
    """A listener that checks its connection's health every ``HEALTH_SECONDS``."""
    running = Child(own_redis.url, f"l{uuid.uuid4().hex[:8]}", str(HEALTH_SECONDS))
    yield running
    running.stop()


def test_an_idle_connection_is_kept_alive_by_its_health_checks(quick_health: Child, own_redis: RedisServer) -> None:
    assert quick_health.next() == {"connect": False}
    quick_health.send("watch 4")
    quick_health.next()
    redis = own_redis.client()
    pings = lambda: int(redis.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))  # noqa: E731
    before = pings()
    wait_for(lambda: pings() >= before + 4, 10 * HEALTH_SECONDS * 4, "health-check PINGs from the listener")
    redis.publish(Keys(prefix_of(quick_health)).channel("4"), "still here")
    assert quick_health.next() == {"message": "still here"}, "answered PINGs: the connection was never given up"


def test_a_redis_that_stops_answering_is_left_and_found_again(quick_health: Child, own_redis: RedisServer) -> None:
    assert quick_health.next() == {"connect": False}
    quick_health.send("watch 4")
    quick_health.next()
    assert own_redis.process is not None
    first = _connections(quick_health.process.pid, own_redis.port)
    assert len(first) == 1
    own_redis.process.send_signal(signal.SIGSTOP)  # the connection stays open, and nothing comes on it
    try:
        wait_for(lambda: _connections(quick_health.process.pid, own_redis.port) - first, 20,
                 "the listener left the silent connection for another")
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert quick_health.until({"connect": True}, 30)[-1] == {"connect": True}
    redis = own_redis.client()
    redis.publish(Keys(prefix_of(quick_health)).channel("4"), "found again")
    assert quick_health.next() == {"message": "found again"}


def _connections(pid: int, port: int) -> set[str]:
    """The local ports of process ``pid``'s TCP connections to Redis's ``port``."""
    text = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"], capture_output=True,
                          text=True, check=True).stdout
    return {line.split()[2].rpartition(":")[2] for line in text.splitlines() if f"pid={pid}," in line}
