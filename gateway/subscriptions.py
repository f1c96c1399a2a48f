"""The subscription registry: who is subscribed to what, kept true in Redis.

Guarantees:

- Every write is one Lua script (``gateway/lua``), so subscribe, unsubscribe
  and release from any number of workers never interleave half-way.
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
A script still spans a user's keys and the worker's index, so the registry
runs on a single Redis (or Sentinel-managed) primary, not yet Redis Cluster.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any

import redis
from redis.exceptions import RedisError

from gateway.keys import Keys
from gateway.logs import FaultOnce
from gateway.protocol import as_set, text

log = logging.getLogger(__name__)


def load_script(client: redis.Redis, name: str) -> redis.commands.core.Script:
    """Register ``gateway/lua/<name>.lua`` on ``client``."""
    source = resources.files("gateway").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


#: What recording a connection says (``Registry.connect``, connect.lua).
ADMITTED, AT_LIMIT, REVOKED = 1, 0, -1


def connection_id(worker_id: str, sid: str) -> str:
    return f"{worker_id}/{sid}"


class ScriptCalls:
    """The keys and arguments of each registry script (``gateway/lua``), named by :class:`gateway.keys.Keys`."""

    def __init__(self, keys: Keys, topics: tuple[str, ...]) -> None:
        self.keys = keys
        #: the configured topics: a connection's release names their keys (any other it holds is found too)
        self.topics = topics

    def connect(self, worker: str, sid: str, user: str, limit: int,
                issued_at: float | None) -> tuple[list[str], list[Any]]:
        keys = self.keys
        when = "" if issued_at is None else repr(float(issued_at))
        return ([keys.worker(worker), keys.conns(user), keys.revoked(user)],
                [connection_id(worker, sid), user, limit, when])

    def subscribe(self, worker: str, sid: str, user: str, topics: list[str]) -> tuple[list[str], list[Any]]:
        conn, keys = connection_id(worker, sid), self.keys
        named = [keys.worker(worker), keys.conn(user, conn), keys.user_topics(user)]
        for topic in topics:
            named += [keys.subs(user, topic), keys.topic_of(user, topic), keys.seq(user, topic)]
        return named, [conn, user, *topics]

    def release(self, worker: str, sid: str, user: str, topics: list[str] | None) -> tuple[list[str], list[Any]]:
        """``topics`` None: the connection ended, and every topic it holds goes."""
        conn, keys = connection_id(worker, sid), self.keys
        named = [keys.worker(worker), keys.conn(user, conn), keys.user_topics(user), keys.conns(user)]
        given = self.topics if topics is None else tuple(topics)
        for topic in given:
            named += [keys.subs(user, topic), keys.topic_of(user, topic)]
        return named, [conn, user, "1" if topics is None else "0", keys.base_of(user), *given]


class Registry:
    """The Redis registry seen from one worker (``worker_id``) or a reader."""

    def __init__(self, client: redis.Redis, prefix: str, worker_id: str = "", topics: Iterable[str] = (),
                 partitions: int = 1) -> None:
        self.redis = client
        self.prefix = prefix
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
        return int(self._connect(*self.calls.connect(self.worker_id, sid, user, limit, issued_at)))

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
        return sorted(as_set(self._release(*self.calls.release(owner, sid, user, names))))

    def _user_of(self, worker_id: str, sid: str) -> str | None:
        user = self.redis.hget(self.keys.worker(worker_id), connection_id(worker_id, sid))
        return None if user is None else text(user)

    def reassert(self, held: Iterable[tuple[str, str, Iterable[str]]], batch: int = 500) -> int:
        """Record again every ``(sid, user, topics)`` this worker holds; return how many.

        Used when Redis lost this worker's records (a restart without data, or
        a sweep during a long stall). Pipelined ``batch`` connections at a
        time; the per-user limit is not applied to connections already live.
        """
        count = 0
        with self.redis.pipeline(transaction=False) as pipe:
            for sid, user, topics in held:
                self._connect(*self.calls.connect(self.worker_id, sid, user, 0, None), client=pipe)
                names = list(topics)
                if names:
                    self._subscribe(*self.calls.subscribe(self.worker_id, sid, user, names), client=pipe)
                count += 1
                if count % batch == 0:
                    pipe.execute()
            pipe.execute()
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
        with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                user = known.get(sid)
                if user is not None:
                    self._release(*self.calls.release(self.worker_id, sid, user, None), client=pipe)
            pipe.execute()

    def drop_worker(self, worker_id: str, batch: int = 500) -> int:
        """Remove every record of ``worker_id``; return how many connections it held.

        Each connection is released by its own atomic script, so a drop that
        Redis interrupts half-way leaves only whole connections behind, and
        running it again finishes the job. The scripts are pipelined ``batch``
        at a time: a worker that held 10,000 connections is dropped in 20
        round trips, not 10,000.
        """
        held = self.connections(worker_id)
        with self.redis.pipeline(transaction=False) as pipe:
            for count, (sid, user) in enumerate(held.items(), 1):
                self._release(*self.calls.release(worker_id, sid, user, None), client=pipe)
                if count % batch == 0:
                    pipe.execute()
            pipe.execute()
        self._forget_worker([self.keys.worker(worker_id), self.keys.workers()], [worker_id])
        return len(held)

    # Reads, for workers, publishers and operators.

    def published(self) -> dict[str, int]:
        """Updates published so far, by topic (counted by the publish script)."""
        counts: dict[str, int] = {}
        for shard in self._each(self.keys.published(), "HGETALL"):
            for topic, count in shard.items():
                counts[text(topic)] = counts.get(text(topic), 0) + int(count)
        return counts

    def is_subscribed(self, user: str, topic: str) -> bool:
        return bool(self.redis.sismember(self.keys.topic_of(user, topic), user))

    def subscribers(self, topic: str) -> set[str]:
        return set().union(*(as_set(shard) for shard in self._each(self.keys.topics(topic), "SMEMBERS")))

    def _each(self, keys: list[str], command: str) -> list[Any]:
        """``command`` on each of ``keys`` (one per partition), pipelined: one round trip per node."""
        if len(keys) == 1:
            return [self.redis.execute_command(command, keys[0])]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.execute_command(command, key)
            return list(pipe.execute())

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
