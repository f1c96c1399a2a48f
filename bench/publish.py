"""Paced publishers: processes that publish updates at a set rate.

Three ways to publish, one per system under test, all in batches of what is
due (one Redis round trip a batch, :data:`BATCH` updates at most), so that a
publisher spends little CPU per update and the servers, not the publishers,
are what the rate search finds the limit of:

- ``gateway``: :meth:`gateway.publisher.Publisher.publish_many`, as backend
  jobs do; the gateway assigns each seq in Redis.
- ``baseline``: the message ``flask_socketio.SocketIO(message_queue=url).emit(
  topic, payload, to=room)`` publishes, the same JSON on the same channel,
  pipelined; the publisher numbers the updates itself.
- ``node``: ``@socket.io/redis-emitter``'s ``emitter.to(room).emit(topic,
  payload)``, as a Node backend job emits to Socket.IO servers on the Redis
  adapter, in a Node child of the publisher process (:class:`bench.nodejs.Emitter`)
  that takes one batch a line; the publisher numbers the updates itself, the
  child stamps ``ts``.

All three carry the same update ``{"topic", "user_id", "seq", "ts", "data"}``
(about 200 bytes of data), stamped with ``ts`` at the moment of publishing.

One process publishes a few thousand updates a second at most, so a rate is
split over several processes (:class:`PublisherPool`), each owning a share of
the users, and each reports the rate it reached: a publisher that cannot keep
up is reported as such, never mistaken for a slow system under test. They run
at a lower priority (:data:`NICENESS`), so that they take what CPU the system
under test leaves rather than its share.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Protocol

from redis.exceptions import RedisError

from bench.child import Child, call_all, configure_child, serve, start_all
from bench.nodejs import Emitter, EmitterError
from gateway.errors import PublishError

log = logging.getLogger(__name__)

#: The topic every client subscribes to and every update goes to.
TOPIC = "balance"
#: Bytes of JSON in each update's ``data``.
DATA_BYTES = 200
#: Most updates published in one Redis round trip.
BATCH = 64
#: Seconds at least between two batches of one thread: what fell due meanwhile goes in one batch.
TICK = 0.002
#: Seconds between handing out a step and its first update: every process starts together.
START_DELAY = 0.5
#: Publishers run at the lowest priority by default: on a small machine,
#: dozens of busy publisher threads would otherwise take the system under
#: test's share of the cores (the scheduler shares them per thread). A
#: publisher that cannot keep up then shows as a publish rate below the rate asked.
NICENESS = 19


def sample_data(size: int = DATA_BYTES) -> dict[str, str]:
    """An update's data: a balance padded to ``size`` bytes of compact JSON."""
    data = {"usd": "1020.50", "available": "998.25", "pad": ""}
    compact = len('{"usd":"1020.50","available":"998.25","pad":""}')
    data["pad"] = "x" * max(0, size - compact)
    return data


class Sender(Protocol):
    def send(self, batch: Sequence[tuple[str, int]]) -> list[int]:
        """Publish one update to each ``(user, seq)``, ``seq`` the publisher's count; the seqs sent."""

    @property
    def helpers(self) -> list[int]:
        """PIDs of the processes the sender publishes through, besides its own: their CPU is the publisher's."""

    def close(self) -> None:
        """Release the connections and processes the sender holds."""


class GatewaySender:
    """Publishes with the gateway's own :class:`~gateway.publisher.Publisher`."""

    def __init__(self, redis_url: str, env: Mapping[str, str]) -> None:
        from gateway.config import Config
        from gateway.publisher import Publisher

        self.publisher = Publisher(redis_url, config=Config.from_env(env, server=False))
        self.data = sample_data()

    def send(self, batch: Sequence[tuple[str, int]]) -> list[int]:
        return self.publisher.publish_many([(user, TOPIC, self.data) for user, _ in batch])

    @property
    def helpers(self) -> list[int]:
        return []

    def close(self) -> None:
        self.publisher.close()


class BaselineSender:
    """Publishes what a plain Flask-SocketIO deployment's emit through the message queue publishes."""

    def __init__(self, redis_url: str, env: Mapping[str, str]) -> None:
        import redis
        from socketio import RedisManager

        self.redis = redis.Redis.from_url(redis_url)
        self.channel = "flask-socketio"  # Flask-SocketIO's default message queue channel
        self.host_id = RedisManager(redis_url, write_only=True).host_id
        self.data = sample_data()

    def send(self, batch: Sequence[tuple[str, int]]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for user, seq in batch:
            update = {"topic": TOPIC, "user_id": user, "seq": seq, "ts": time.time(), "data": self.data}
            pipe.publish(self.channel, json.dumps({
                "method": "emit", "event": TOPIC, "data": [update], "binary": False, "namespace": "/",
                "room": f"{TOPIC}_{user}", "skip_sid": None, "callback": None, "host_id": self.host_id,
            }))
        pipe.execute()
        return [seq for _, seq in batch]

    @property
    def helpers(self) -> list[int]:
        return []

    def close(self) -> None:
        self.redis.close()


class NodeSender:
    """Publishes with ``@socket.io/redis-emitter``, through a Node child process of this publisher."""

    def __init__(self, redis_url: str, env: Mapping[str, str]) -> None:
        self.emitter = Emitter(redis_url, env, TOPIC, sample_data())

    def send(self, batch: Sequence[tuple[str, int]]) -> list[int]:
        self.emitter.emit(batch)
        return [seq for _, seq in batch]

    @property
    def helpers(self) -> list[int]:
        return [self.emitter.pid]

    def close(self) -> None:
        self.emitter.close()


SENDERS: dict[str, type[GatewaySender] | type[BaselineSender] | type[NodeSender]] = {
    "gateway": GatewaySender, "baseline": BaselineSender, "node": NodeSender,
}


def pace(
    sender: Sender, users: Sequence[str], rate: float, seconds: float, start_at: float,
    seq_base: Mapping[str, int], threads: int = 1,
) -> dict[str, Any]:
    """Publish ``rate`` updates a second over ``users``, from ``start_at`` for ``seconds``.

    ``threads`` threads share the users and the rate, so that several
    publishes wait for Redis at once. Stops at the end of the window even when
    behind: the report then shows the rate reached, lower than the rate asked.
    """
    count = max(1, min(threads, len(users)))
    with ThreadPoolExecutor(count, thread_name_prefix="publish") as pool:
        shares = [
            pool.submit(_pace_one, sender, users[i::count], rate / count, seconds, start_at, seq_base)
            for i in range(count)
        ]
        reports = [share.result() for share in shares]
    ranges: dict[str, list[int]] = {}
    for report in reports:
        ranges.update(report["ranges"])
    return {
        "sent": sum(r["sent"] for r in reports), "errors": sum(r["errors"] for r in reports),
        "seconds": max(r["seconds"] for r in reports), "ranges": ranges,
    }


def _pace_one(
    sender: Sender, users: Sequence[str], rate: float, seconds: float, start_at: float, seq_base: Mapping[str, int]
) -> dict[str, Any]:
    """One thread of :func:`pace`: ``users`` in turn, at ``rate``."""
    total = max(1, round(rate * seconds))
    seqs = {user: seq_base.get(user, 0) for user in users}
    ranges: dict[str, list[int]] = {}
    sent = errors = 0
    time.sleep(max(0.0, start_at - time.time()))  # pacing: every publisher starts together
    deadline = start_at + seconds
    while sent < total and time.time() < deadline:
        due = min(total, sent + BATCH, int((time.time() - start_at) * rate) + 1)
        # A user appears once a batch, so that its seqs are known before the next one.
        batch_users = list(dict.fromkeys(users[n % len(users)] for n in range(sent, due)))
        try:
            answers = sender.send([(user, seqs[user] + 1) for user in batch_users])
        except (RedisError, PublishError, ValueError, EmitterError) as exc:
            errors += len(batch_users)
            log.debug("publish failed: %s", exc)
        else:
            for user, seq in zip(batch_users, answers, strict=True):
                seqs[user] = seq
                span = ranges.setdefault(user, [seq, seq, 0])
                span[1], span[2] = seq, span[2] + 1
        sent += len(batch_users)
        time.sleep(max(TICK, start_at + sent / rate - time.time()))  # pacing: the next batch's time
    return {"sent": sent, "errors": errors, "seconds": time.time() - start_at, "ranges": ranges}


def main(conn: Connection, kind: str, redis_url: str, env: dict[str, str], niceness: int, log_level: str) -> None:
    """A publisher process: one sender, paced on command, at a lower priority (its helpers too)."""
    configure_child(log_level)
    os.nice(niceness)
    sender: Sender = SENDERS[kind](redis_url, env)

    def publish(**arguments: Any) -> dict[str, Any]:
        return pace(sender, **arguments)

    def pids() -> list[int]:
        return [os.getpid(), *sender.helpers]

    try:
        serve(conn, {"publish": publish, "pids": pids})
    finally:
        sender.close()


@dataclass(frozen=True)
class Sent:
    """What the publishers sent in one window."""

    rate: float
    achieved: float
    sent: int
    errors: int
    processes: int
    start: float
    seconds: float
    ranges: dict[str, tuple[int, int]]
    gaps: int


class PublisherPool:
    """Up to ``size`` publisher processes of ``threads`` threads; a window uses as many as its rate needs."""

    def __init__(
        self, kind: str, redis_url: str, env: dict[str, str], size: int, per_process: int, threads: int,
        log_level: str, niceness: int = NICENESS,
    ) -> None:
        self.per_process = per_process
        self.threads = threads
        self.children = [
            Child(f"publisher-{i}", main, kind, redis_url, env, niceness, log_level) for i in range(size)
        ]
        self.last_seq: dict[str, int] = {}

    def __enter__(self) -> PublisherPool:
        start_all(self.children)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for child in self.children:
            child.stop()

    @property
    def pids(self) -> list[int]:
        """The publisher processes and the helpers they publish through (the node system's emitters)."""
        return [pid for child in self.children for pid in child.call("pids", 30)]

    def processes_for(self, rate: float) -> int:
        return max(1, min(len(self.children), math.ceil(rate / self.per_process)))

    def run(self, users: Sequence[str], rate: float, seconds: float) -> Sent:
        """Publish ``rate`` updates a second over ``users`` for ``seconds``; return what was sent."""
        count = self.processes_for(rate)
        start_at = time.time() + START_DELAY
        shares = [list(users[i::count]) for i in range(count)]
        arguments = [
            {"users": share, "rate": rate / count, "seconds": seconds, "start_at": start_at,
             "seq_base": {user: self.last_seq.get(user, 0) for user in share}, "threads": self.threads}
            for share in shares
        ]
        reports = call_all(self.children[:count], "publish", START_DELAY + seconds + 60, arguments)
        return self._merge(reports, rate, count, start_at, seconds)

    def _merge(self, reports: list[dict[str, Any]], rate: float, count: int, start_at: float, seconds: float) -> Sent:
        ranges: dict[str, tuple[int, int]] = {}
        gaps = 0
        for report in reports:
            for user, (first, last, published) in report["ranges"].items():
                ranges[user] = (first, last)
                gaps += (last - first + 1) - published
                self.last_seq[user] = last
        sent = sum(report["sent"] for report in reports)
        achieved = sum(report["sent"] / report["seconds"] for report in reports if report["seconds"] > 0)
        errors = sum(report["errors"] for report in reports)
        return Sent(rate, achieved, sent, errors, count, start_at, seconds, ranges, gaps)
