"""Where each of the gateway's Redis keys and channels lives: one layout, named in one place.

Every key a script touches is passed to it in ``KEYS``, built here: redis-py
routes a script by its keys, and Redis Cluster refuses one whose keys are
not all on the node that runs it.

The layout has ``partitions`` partitions of users. On a single Redis (or a
Sentinel-managed primary) there is one, and every name is the prefix and its
parts, as it always was (``gw:seq:4:balance``). On Redis Cluster a user falls
in one of P partitions by the slot of their id, and every key and the
channel of that user carry the partition's hash tag
(``gw:{1dx}:seq:4:balance``), so that a user's keys share one slot and each
per-user script stays on one node. The tags are part of the data layout:
:func:`partition_tags` must never change what it returns.

Keys of one user: ``seq``, ``hist``, ``subs``, ``user``, ``conns``,
``revoked``, the connection sets ``conn`` and the channel ``u``; the topic
index (``topic``) and the ``published`` counter are kept per partition.
Global, one key each: the worker indexes ``worker:<id>``, the leases
``workers``, the data ``epoch`` and the ``control`` channel.
"""

from __future__ import annotations

import functools
import itertools
import string
from collections.abc import Iterator
from dataclasses import dataclass

from redis.crc import key_slot

#: Redis Cluster's hash slots.
SLOTS = 16384
#: Characters of a partition tag, tried in this order (part of the data layout).
_TAG_ALPHABET = string.digits + string.ascii_lowercase


def _candidates() -> Iterator[str]:
    """Every tag of one, two, three, then four characters, in a fixed order."""
    for length in range(1, 5):
        for letters in itertools.product(_TAG_ALPHABET, repeat=length):
            yield "".join(letters)


@functools.cache
def partition_tags(partitions: int) -> tuple[str, ...]:
    """For each partition, the first tag (in a fixed order) whose slot falls in the partition's slot range.

    Partition p holds the slots ``p * SLOTS // partitions`` up to the next
    partition's first, so the partitions spread over a cluster's nodes as
    its slot ranges do. 1 partition: no tag at all.
    """
    if partitions == 1:
        return ("",)
    if partitions < 1 or SLOTS % partitions:
        raise ValueError(f"partitions must divide {SLOTS}, got {partitions}")
    width = SLOTS // partitions
    tags: list[str | None] = [None] * partitions
    missing = partitions
    for tag in _candidates():
        index = key_slot(tag.encode()) // width
        if tags[index] is None:
            tags[index] = tag
            missing -= 1
            if not missing:
                return tuple(tag for tag in tags if tag is not None)
    raise ValueError(f"no tag found for every one of {partitions} partitions")


def partition_of(user: str, partitions: int) -> int:
    """The partition of ``user``: by the slot of their id (which has no braces, so hashes whole)."""
    return 0 if partitions == 1 else key_slot(user.encode()) // (SLOTS // partitions)


@dataclass(frozen=True)
class Keys:
    """The names of the keys and channels under ``prefix``, for a layout of ``partitions`` (1: a single Redis)."""

    prefix: str
    partitions: int = 1

    def _in(self, partition: int, *parts: str) -> str:
        tag = partition_tags(self.partitions)[partition]
        return ":".join((self.prefix, f"{{{tag}}}", *parts) if tag else (self.prefix, *parts))

    def _of(self, user: str, *parts: str) -> str:
        return self._in(partition_of(user, self.partitions), *parts)

    # A user's own keys and channel: one slot.

    def base_of(self, user: str) -> str:
        """What every key of ``user`` starts with (``gw:``, or ``gw:{tag}:``)."""
        return self._of(user, "")

    def seq(self, user: str, topic: str) -> str:
        """string: the last seq assigned to (user, topic)."""
        return self._of(user, "seq", user, topic)

    def history(self, user: str, topic: str) -> str:
        """stream: the last updates of (user, topic), entry id ``<seq>-0``."""
        return self._of(user, "hist", user, topic)

    def channel(self, user: str) -> str:
        """The pub/sub channel of the user's updates."""
        return self._of(user, "u", user)

    def subs(self, user: str, topic: str) -> str:
        """set: the connections holding (user, topic)."""
        return self._of(user, "subs", user, topic)

    def user_topics(self, user: str) -> str:
        """set: the topics the user holds on at least one connection."""
        return self._of(user, "user", user)

    def conns(self, user: str) -> str:
        """set: the user's live connections, on every worker."""
        return self._of(user, "conns", user)

    def revoked(self, user: str) -> str:
        """string: tokens of the user issued before this time (Unix seconds) are refused."""
        return self._of(user, "revoked", user)

    def conn(self, user: str, conn: str) -> str:
        """set: the topics of one connection (``<worker>/<sid>``) of ``user``."""
        return self._of(user, "conn", conn)

    def topic_of(self, user: str, topic: str) -> str:
        """set: the users of the user's partition holding ``topic``."""
        return self._of(user, "topic", topic)

    def published_of(self, user: str) -> str:
        """hash: topic -> updates published, for the user's partition."""
        return self._of(user, "published")

    # Kept per partition: read whole, one key per partition.

    def topics(self, topic: str) -> list[str]:
        """The topic index of every partition."""
        return [self._in(partition, "topic", topic) for partition in range(self.partitions)]

    def published(self) -> list[str]:
        """The ``published`` counters of every partition."""
        return [self._in(partition, "published") for partition in range(self.partitions)]

    # Global: one key each.

    def worker(self, worker: str) -> str:
        """hash: a worker's connections -> their users (what a sweep walks)."""
        return f"{self.prefix}:worker:{worker}"

    def workers(self) -> str:
        """zset: each worker's lease end (milliseconds, Redis's clock)."""
        return f"{self.prefix}:workers"

    def epoch(self) -> str:
        """string: the generation of Redis's data, set once, gone when Redis loses its data."""
        return f"{self.prefix}:epoch"

    def layout(self) -> str:
        """string: the partition count the data was laid out with (Redis Cluster only)."""
        return f"{self.prefix}:layout"

    def control(self) -> str:
        """The channel of kicks, heard by every worker."""
        return f"{self.prefix}:control"
