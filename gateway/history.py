"""What a client missed: each user's recent updates, kept per topic in Redis.

Guarantees:

- The publish script keeps the last ``GATEWAY_HISTORY_SIZE`` updates of each
  (user, topic) in a stream whose entry ids are the seqs, so a busy user
  never evicts a quiet user's history; a stream lives
  ``GATEWAY_HISTORY_TTL`` seconds after its last update.
- :func:`plan` decides, without I/O, what a resuming client gets: every
  missed update in order when history still holds them all, else the latest
  update once as a snapshot.
- Reads raise :class:`redis.exceptions.RedisError` when Redis is away.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from gateway.keys import Keys
from gateway.protocol import text


@dataclass(frozen=True)
class Catchup:
    """What to send a (re)subscribing client for one topic, oldest first."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    snapshot: bool = False
    #: the topic's seq when history was read: the client is level with it after
    current: int = 0

    def ack(self, seq: int) -> dict[str, Any]:
        """The topic's entry in the subscribe ack: says which happened."""
        if self.snapshot:
            return {"seq": seq, "snapshot": True}
        if self.updates:
            return {"seq": seq, "replayed": len(self.updates)}
        return {"seq": seq}


def plan(since: int | None, current: int, entries: list[tuple[int, dict[str, Any]]]) -> Catchup:
    """What a client holding ``since`` gets, given ``entries`` (seq, payload) after it.

    ``entries`` are history entries with seq > ``since`` (all of history, oldest
    first, when ``since`` is None or ahead of ``current``).
    """
    if since is not None and since == current:
        return Catchup(current=current)
    if since is not None and since < current and entries and entries[0][0] == since + 1:
        return Catchup([payload for _, payload in entries], current=current)
    if not entries:
        return Catchup(current=current)
    latest = dict(entries[-1][1])
    latest["snapshot"] = True
    return Catchup([latest], snapshot=True, current=current)


class History:
    """Reads of the per-(user, topic) history streams."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)

    def epoch(self) -> str:
        """The generation of Redis's data: set once, gone when Redis loses its data."""
        key = self.keys.epoch()
        self.redis.set(key, uuid.uuid4().hex, nx=True)
        return text(self.redis.get(key) or b"")

    def key(self, user: str, topic: str) -> str:
        return self.keys.history(user, topic)

    def catchup(self, user: str, topic: str, since: int | None, current: int) -> Catchup:
        """What a client that holds ``since`` (None: nothing) must be sent."""
        if since is not None and since == current:
            return Catchup(current=current)
        if since is None or since > current:
            entries = self._read(self.redis.xrevrange(self.key(user, topic), count=1))
        else:
            entries = self._read(self.redis.xrange(self.key(user, topic), min=f"{since + 1}-0"))
        return plan(since, current, entries)

    def missed(self, rooms: list[tuple[str, str, int]]) -> list[Catchup]:
        """What a listener missed in each ``(user, topic, last seq delivered)``, in one round trip.

        After a Redis reconnect a worker asks this for every room it serves.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            for user, topic, seq in rooms:
                pipe.xrange(self.key(user, topic), min=f"{seq + 1}-0")
            replies = pipe.execute()
        caught = []
        for (_, _, seq), reply in zip(rooms, replies, strict=True):
            entries = self._read(reply)
            caught.append(plan(seq, entries[-1][0] if entries else seq, entries))
        return caught

    @staticmethod
    def _read(reply: Any) -> list[tuple[int, dict[str, Any]]]:
        entries = []
        for entry_id, fields in reply:
            seq = int(text(entry_id).split("-", 1)[0])
            entries.append((seq, json.loads(fields[b"p"])))
        return entries
