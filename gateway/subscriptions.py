"""The subscription registry: who is subscribed to what, kept true in Redis.

Guarantees:

- Every write to a user's records is one Lua script (``gateway/lua``), so
  subscribe, unsubscribe and release from any number of workers never
  interleave half-way.
- A (user, topic) is reported while at least one live connection holds it; a
  user on two devices keeps a topic until the last device leaves.
- Records are owned by a worker (``worker:<id>`` lists its connections), so
  the records of a worker that died can be found and removed whole.
- Each user's live connections are counted across every worker
  (``conns:<user>``); :meth:`Registry.connect` refuses one over the limit
  atomically, so two devices connecting at once on two machines cannot both
  take the last place.
- Reads are plain set reads: consistent per call, not across calls.
- Liveness is a lease: ``workers`` maps each worker to the end of its lease
  on Redis's clock. A worker renews it every beat; the records of a worker
  whose lease ended are removed by any live worker or ``gateway sweep``. A
  worker that finds its lease new (Redis lost it) re-asserts its records.
- When Redis is away, every call raises :class:`redis.exceptions.RedisError`
  after the client's retries; nothing is queued or silently dropped.

Keys live under the configured prefix, named by :class:`gateway.keys.Keys`
and passed to each script in ``KEYS``; each script documents those it takes.

On Redis Cluster every per-user script runs on the node of the user's slot,
and the worker's index (``worker:<id>``, a slot of its own) is written in a
step of its own: before the connection's records (so a sweep always finds
them) and removed after them. An index entry without records left by a
crash between two steps is removed by the sweep like any other. A worker's
lease is removed once its index is gone; a worker that registered in
between loses its lease, and re-asserts its records at its next beat, as
after any lost lease.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.exceptions import NoScriptError, RedisError

from gateway.keys import Keys
from gateway.logs import FaultOnce
from gateway.protocol import as_set, text

log = logging.getLogger(__name__)
T = TypeVar("T")


def load_script(client: redis.Redis, name: str) -> redis.commands.core.Script:
    """Register ``gateway/lua/<name>.lua`` on ``client``."""
    source = resources.files("gateway").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


#: What recording a connection says (``Registry.connect``, connect.lua).
ADMITTED, AT_LIMIT, REVOKED = 1, 0, -1


def connection_id(worker_id: str, sid: str) -> str:
    return f"{worker_id}/{sid}"


class ScriptCalls:
    """The keys and arguments of each registry script (``gateway/lua``), named by :class:`gateway.keys.Keys`.

    On a single Redis a script also writes the worker's index (its key is
    given last); on Redis Cluster the index lives in a slot of its own, and
    the :class:`Registry` writes it in a step of its own: before the
    records, and removed after them.
    """

    def __init__(self, keys: Keys, topics: tuple[str, ...]) -> None:
        self.keys = keys
        #: the configured topics: a connection's release names their keys (any other it holds is found too)
        self.topics = topics
        self.indexed = keys.partitions == 1

    def _index(self, worker: str) -> list[str]:
        return [self.keys.worker(worker)] if self.indexed else []

    def connect(self, worker: str, sid: str, user: str, limit: int,
                issued_at: float | None) -> tuple[list[str], list[Any]]:
        keys = self.keys
        when = "" if issued_at is None else repr(float(issued_at))
        return ([keys.conns(user), keys.revoked(user), *self._index(worker)],
                [connection_id(worker, sid), user, limit, when])

    def subscribe(self, worker: str, sid: str, user: str, topics: list[str]) -> tuple[list[str], list[Any]]:
        conn, keys = connection_id(worker, sid), self.keys
        named = [keys.conn(user, conn), keys.user_topics(user)]
        for topic in topics:
            named += [keys.subs(user, topic), keys.topic_of(user, topic), keys.seq(user, topic)]
        return [*named, *self._index(worker)], [conn, user, *topics]

    def release(self, worker: str, sid: str, user: str, topics: list[str] | None) -> tuple[list[str], list[Any]]:
        """``topics`` None: the connection ended, and every topic it holds goes."""
        conn, keys = connection_id(worker, sid), self.keys
        named = [keys.conn(user, conn), keys.user_topics(user), keys.conns(user)]
        given = self.topics if topics is None else tuple(topics)
        for topic in given:
            named += [keys.subs(user, topic), keys.topic_of(user, topic)]
        return [*named, *self._index(worker)], [conn, user, "1" if topics is None else "0", keys.base_of(user),
                                                 *given]


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def each_key(client: redis.Redis, keys: list[str], command: str) -> list[Any]:
    """``command`` on each of ``keys`` (one per partition), pipelined: one round trip per node."""
    if len(keys) == 1:
        return [client.execute_command(command, keys[0])]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command(command, key)
        return list(pipe.execute())


def run_pipelined(client: redis.Redis, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run ``script`` for each ``(keys, args)`` of ``calls`` in one pipeline; return the answers, in order.

    EVALSHA through ``execute_command``: a cluster pipeline refuses
    ``evalsha`` itself, and routes this by its keys, one round trip per
    node. Calls Redis refused with NOSCRIPT (it restarted, or its scripts
    were flushed) never ran: the script is loaded and they run again, once.
    """
    answers: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        if attempt:
            script.sha = client.script_load(script.script)
        pipe = client.pipeline(transaction=False)
        for index in todo:
            keys, args = calls[index]
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        again = []
        for index, answer in zip(todo, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(answer, NoScriptError):
                again.append(index)
            elif isinstance(answer, Exception):
                raise answer
            else:
                answers[index] = answer
        todo = again
        if not todo:
            return answers
    raise NoScriptError("Redis lost the script again while it ran")


class Registry:
    """The Redis registry seen from one worker (``worker_id``) or a reader."""

    def __init__(self, client: redis.Redis, prefix: str, worker_id: str = "", topics: Iterable[str] = (),
                 partitions: int = 1) -> None:
        self.redis = client
        self.keys = Keys(prefix, partitions)
        self.worker_id = worker_id
        self.calls = ScriptCalls(self.keys, tuple(topics))
        self._connect = load_script(client, "connect")
        self._revoke = load_script(client, "revoke")
        self._subscribe = load_script(client, "subscribe")
        self._release = load_script(client, "release")
        self._heartbeat = load_script(client, "heartbeat")
        self._expired = load_script(client, "expired")
        self._forget_worker = load_script(client, "forget_worker")

    # Writes: one script each, owned by this worker.

    def connect(self, sid: str, user: str, limit: int = 0, issued_at: float | None = None) -> int:
        """Record connection ``sid`` of ``user``: :data:`ADMITTED`; or, with nothing recorded, :data:`AT_LIMIT`
        when the user has ``limit`` connections already, :data:`REVOKED` when the connection's token was issued
        (``issued_at``; None: not known) before the user's revocation.

        ``limit`` 0: no limit. Recording a connection twice is harmless.
        """
        keys, args = self.calls.connect(self.worker_id, sid, user, limit, issued_at)
        if self.calls.indexed:
            return int(self._connect(keys, args))
        index, conn = self.keys.worker(self.worker_id), connection_id(self.worker_id, sid)
        self.redis.hset(index, conn, user)  # the index first: a sweep finds whatever follows
        outcome = int(self._connect(keys, args))
        if outcome != ADMITTED:
            self.redis.hdel(index, conn)  # refused: nothing was recorded
        return outcome

    def is_revoked(self, user: str, issued_at: float | None) -> bool:
        """Whether a token of ``user`` issued at ``issued_at`` (None: not known) is refused (:meth:`revoke`)."""
        revoked = self.redis.get(self.keys.revoked(user))
        return revoked is not None and (issued_at is None or issued_at < float(revoked))

    def revoke(self, user: str, issued_before: float) -> float:
        """Refuse from now on every token of ``user`` issued before ``issued_before``; return the time in force.

        Kept in Redis, so across gateway restarts. A revocation is never
        undone: asking for an earlier time keeps the later one.
        """
        return float(self._revoke([self.keys.revoked(user)], [repr(float(issued_before))]))

    def subscribe(self, sid: str, user: str, topics: Iterable[str]) -> dict[str, int]:
        """Record ``topics`` for connection ``sid`` of ``user``; return each topic's current seq."""
        names = list(topics)
        if not names:
            return {}
        if not self.calls.indexed:  # the index first: a sweep finds whatever follows
            self.redis.hset(self.keys.worker(self.worker_id), connection_id(self.worker_id, sid), user)
        seqs = self._subscribe(*self.calls.subscribe(self.worker_id, sid, user, names))
        return dict(zip(names, (int(seq) for seq in seqs), strict=False))

    def release(self, sid: str, topics: Iterable[str] | None = None, *, user: str | None = None,
                worker_id: str | None = None) -> list[str]:
        """Remove ``topics`` of connection ``sid`` of ``user``; return those removed.

        ``topics`` None: the connection ended, and every record of it goes.
        ``user`` None: read from the worker's index first (one more round trip).
        """
        names = None if topics is None else list(topics)
        if names == []:
            return []
        owner = worker_id or self.worker_id
        user = user if user is not None else self._user_of(owner, sid)
        if user is None:
            return []
        removed = sorted(as_set(self._release(*self.calls.release(owner, sid, user, names))))
        if names is None and not self.calls.indexed:  # the index last
            self.redis.hdel(self.keys.worker(owner), connection_id(owner, sid))
        return removed

    def _user_of(self, worker_id: str, sid: str) -> str | None:
        user = self.redis.hget(self.keys.worker(worker_id), connection_id(worker_id, sid))
        return None if user is None else text(user)

    def reassert(self, held: Iterable[tuple[str, str, Iterable[str]]], batch: int = 500) -> int:
        """Record again every ``(sid, user, topics)`` this worker holds; return how many.

        Used when Redis lost this worker's records (a restart without data, or
        a sweep during a long stall). Pipelined ``batch`` connections at a
        time; the per-user limit is not applied to connections already live.
        """
        count, worker = 0, self.worker_id
        for chunk in chunks(held, batch):
            rows = [(sid, user, list(topics)) for sid, user, topics in chunk]
            if not self.calls.indexed:  # the index first
                self.redis.hset(self.keys.worker(worker),
                                mapping={connection_id(worker, sid): user for sid, user, _ in rows})
            run_pipelined(self.redis, self._connect, [self.calls.connect(worker, sid, user, 0, None)
                                                      for sid, user, _ in rows])
            run_pipelined(self.redis, self._subscribe, [self.calls.subscribe(worker, sid, user, names)
                                                        for sid, user, names in rows if names])
            count += len(rows)
        return count

    # Leases and sweeping.

    def beat(self, lease_seconds: float) -> bool:
        """Renew this worker's lease; ``True`` when it was new (re-assert)."""
        return bool(self._heartbeat([self.keys.workers()], [self.worker_id, int(lease_seconds * 1000)]))

    def workers(self) -> dict[str, float]:
        """Every worker with a lease: id -> lease end (Unix seconds)."""
        leases: list[Any] = self.redis.zrange(self.keys.workers(), 0, -1, withscores=True)
        return {text(member): float(score) / 1000 for member, score in leases}

    def owners(self) -> set[str]:
        """Every worker that holds records, with or without a lease."""
        start = len(self.keys.worker(""))
        return {text(key)[start:] for key in self.redis.scan_iter(self.keys.worker("*"), count=1000)}

    def expired(self) -> list[str]:
        """Workers whose lease ended."""
        return sorted(as_set(self._expired([self.keys.workers()])))

    def connections(self, worker_id: str) -> dict[str, str]:
        """The connections a worker holds records for: sid -> user."""
        held = self.redis.hgetall(self.keys.worker(worker_id))
        start = len(worker_id) + 1
        return {text(conn)[start:]: text(user) for conn, user in held.items()}

    def release_all(self, sids: Iterable[str], users: dict[str, str | None] | None = None) -> None:
        """Remove every record of each closed connection of ``sids``, in one round trip.

        Each connection is released by its own atomic script, as by
        :meth:`release`. ``users``: the user of each sid, where known; the
        others are read from the worker's index first, in one more round trip.
        """
        known = dict(users or {})
        sids = list(sids)
        unknown = [sid for sid in sids if known.get(sid) is None]
        if unknown:
            found = self.redis.hmget(self.keys.worker(self.worker_id),
                                     [connection_id(self.worker_id, sid) for sid in unknown])
            for sid, user in zip(unknown, found, strict=True):
                known[sid] = None if user is None else text(user)
        self._release_whole(self.worker_id, [(sid, user) for sid in sids if (user := known.get(sid)) is not None])

    def _release_whole(self, worker_id: str, held: list[tuple[str, str]]) -> None:
        """Release every ``(sid, user)`` of ``worker_id`` whole, pipelined; on a cluster, the index last."""
        run_pipelined(self.redis, self._release, [self.calls.release(worker_id, sid, user, None) for sid, user in held])
        if held and not self.calls.indexed:
            self.redis.hdel(self.keys.worker(worker_id), *(connection_id(worker_id, sid) for sid, _ in held))

    def drop_worker(self, worker_id: str, batch: int = 500) -> int:
        """Remove every record of ``worker_id``; return how many connections it held.

        Each connection is released by its own atomic script, so a drop that
        Redis interrupts half-way leaves only whole connections behind, and
        running it again finishes the job. The scripts are pipelined ``batch``
        at a time: a worker that held 10,000 connections is dropped in 20
        round trips, not 10,000.
        """
        held = self.connections(worker_id)
        for chunk in chunks(held.items(), batch):
            self._release_whole(worker_id, chunk)
        index, leases = self.keys.worker(worker_id), self.keys.workers()
        if self.calls.indexed:
            self._forget_worker([index, leases], [worker_id])
        elif not self.redis.exists(index):  # two slots: a worker that registered meanwhile beats again
            self.redis.zrem(leases, worker_id)
        return len(held)

    # Reads, for workers, publishers and operators.

    def published(self) -> dict[str, int]:
        """Updates published so far, by topic (counted by the publish script)."""
        counts: dict[str, int] = {}
        for shard in each_key(self.redis, self.keys.published(), "HGETALL"):
            for topic, count in shard.items():
                counts[text(topic)] = counts.get(text(topic), 0) + int(count)
        return counts

    def is_subscribed(self, user: str, topic: str) -> bool:
        return bool(self.redis.sismember(self.keys.topic_of(user, topic), user))

    def subscribers(self, topic: str) -> set[str]:
        return set().union(*(as_set(shard) for shard in each_key(self.redis, self.keys.topics(topic), "SMEMBERS")))

    def user_connections(self, user: str) -> int:
        """Live connections of ``user`` on every worker (those counted at CONNECT)."""
        return int(self.redis.scard(self.keys.conns(user)))

    def user_topics(self, user: str) -> set[str]:
        return as_set(self.redis.smembers(self.keys.user_topics(user)))


#: Closed connections released in one round trip at most.
RELEASE_BATCH = 500


class PendingReleases:
    """Removes the records of closed connections, and retries what Redis refused.

    ``release`` never raises. Releases asked while one is under way go
    together in the next round trip (at most :data:`RELEASE_BATCH`): when
    thousands of clients leave at once, their records go in a few pipelined
    round trips rather than one each, and an idle worker's release is not
    delayed. A release that fails (Redis away) is kept and retried at every
    heartbeat, so that the registry stops reporting a connection that is gone
    as soon as Redis answers again; the outage is logged once at ERROR, not
    once per connection.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        #: sid -> user of the releases Redis refused, retried at every heartbeat
        self.pending: dict[str, str | None] = {}
        #: closed connections waiting for the release under way to finish, with their users
        self.queued: dict[str, str | None] = {}
        self._releasing = False
        self._fault = FaultOnce(log, "could not remove the records of closed connections")

    def release(self, sid: str, user: str | None = None, **context: Any) -> None:
        """Remove the records of closed connection ``sid`` of ``user`` (None: read from the worker's index)."""
        self.queued[sid] = user
        if self._releasing:
            return  # the caller releasing now takes this one in its next round trip
        self._releasing = True
        try:
            while self.queued:
                batch = dict(itertools.islice(self.queued.items(), RELEASE_BATCH))
                for done in batch:
                    del self.queued[done]
                try:
                    self.registry.release_all(batch, batch)
                except RedisError:
                    self.pending.update(batch)
                    self._fault.fault(sid=sid, connections=len(batch), user=user, **context)
                    continue
                log.debug("connections closed, records released",
                          extra={"connections": len(batch), "user": user, **context})
        finally:
            self._releasing = False

    def retry(self) -> int:
        """Release again what failed before; return how many succeeded."""
        done = 0
        for sid, user in list(self.pending.items()):
            try:
                self.registry.release(sid, user=user)
            except RedisError:
                self._fault.fault(sid=sid)
                return done
            del self.pending[sid]
            done += 1
        self._fault.clear()
        return done
