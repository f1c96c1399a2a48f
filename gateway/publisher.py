"""The backend API: publish a user's update, ask who is subscribed.

Guarantees:

- ``publish`` validates first: an unknown topic, a bad user id or data that is
  not strict JSON raises ``ValueError`` before anything reaches Redis.
- The seq is assigned, the update kept as history (the last
  ``GATEWAY_HISTORY_SIZE`` per user and topic, for ``GATEWAY_HISTORY_TTL``
  seconds after the last publish) and published in one atomic Redis script,
  so the updates of one (user, topic) are delivered in seq order, 1, 2, 3...,
  whatever the number of publishing processes and threads.
- When Redis cannot take the publish (after redis-py's retries, about a
  second), :class:`~gateway.errors.PublishError` is raised: an update is
  never dropped silently. If the connection breaks after Redis ran the
  script, a retry may publish the same data again under the next seq.
- Routed: an update goes to the user's own channel, which only the workers
  holding a connection of that user listen to, so a worker's work does not
  grow with the number of workers and instances.
- Batches: ``publish_many`` sends many updates in one round trip to Redis,
  each with the same guarantees as ``publish``; a job that updates every
  user at once spends a few microseconds of network per update instead of a
  round trip.
- Plain Python: no gevent needed; one ``Publisher`` may be shared by threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from urllib.parse import urlparse

import redis
from redis.exceptions import NoScriptError, RedisError

from gateway import protocol
from gateway.config import CLUSTER_SCHEMES, Config
from gateway.errors import ConfigError, PublishError
from gateway.keys import Keys
from gateway.redis_client import connect
from gateway.subscriptions import Registry, load_script, run_pipelined


class Publisher:
    """Publishes per-user updates through Redis to every gateway worker."""

    def __init__(self, redis_url: str | None = None, *, config: Config | None = None) -> None:
        self.config = config or Config.from_env(server=False)
        url = redis_url or self.config.redis_url
        if not url:
            raise ConfigError("GATEWAY_REDIS_URL", "is not set and no redis_url was given")
        self.redis = connect(url, name="gateway-publisher")
        partitions = self.config.redis_partitions if urlparse(url).scheme in CLUSTER_SCHEMES else 1
        self.registry = Registry(self.redis, self.config.key_prefix, topics=self.config.topics,
                                 partitions=partitions)
        self.keys = self.registry.keys
        if partitions > 1:
            check_layout(self.redis, self.keys)
        self._topics = frozenset(self.config.topics)
        self._publish = load_script(self.redis, "publish")

    def publish(self, user_id: str | int, topic: str, data: object) -> int:
        """Send ``data`` to ``user_id``'s subscribers of ``topic``; return its seq."""
        keys, args = self._call(user_id, topic, data)
        try:
            return int(self._publish(keys, args))
        except RedisError as exc:
            raise PublishError(f"update {topic} for user {protocol.user_id(user_id)} not published: {exc}") from exc

    def disconnect_user(self, user_id: str | int) -> int:
        """Close every live connection of ``user_id`` on every worker of every instance; return the workers told.

        Each worker closes the user's connections on hearing it, within a
        second (contract §4). A token of the user still lets it connect
        again; the client does not reconnect on its own after a kick.
        """
        message = protocol.kick_message(user_id)
        try:
            return int(self.redis.publish(self.keys.control(), message))
        except RedisError as exc:
            raise PublishError(f"user {protocol.user_id(user_id)} not kicked: {exc}") from exc

    def revoke_tokens(self, user_id: str | int, issued_before: float | None = None) -> int:
        """Refuse every token of ``user_id`` issued before ``issued_before`` (default: now), at CONNECT, for
        good, and close the user's live connections everywhere (:meth:`disconnect_user`); return the workers
        told. Kept in Redis: it holds across gateway restarts."""
        user = protocol.user_id(user_id)
        try:
            self.registry.revoke(user, time.time() if issued_before is None else issued_before)
        except RedisError as exc:
            raise PublishError(f"tokens of user {user} not revoked: {exc}") from exc
        return self.disconnect_user(user)

    def publish_many(self, updates: Iterable[tuple[str | int, str, object]]) -> list[int]:
        """Publish ``(user_id, topic, data)`` updates in one round trip; return their seqs, in order.

        Every update is checked before any is sent: one bad update raises
        ``ValueError`` and nothing is published. ``PublishError`` means Redis
        failed during the batch: the updates before the failure may have been
        published (each with its seq, in history), the others were not.
        """
        batch = [self._call(user_id, topic, data) for user_id, topic, data in updates]
        try:
            return [int(seq) for seq in run_pipelined(self.redis, self._publish, batch)]
        except NoScriptError:
            raise PublishError(
                f"a batch of {len(batch)} updates was not fully published: Redis lost the script") from None
        except RedisError as exc:
            raise PublishError(f"a batch of {len(batch)} updates was not fully published: {exc}") from exc

    def is_subscribed(self, user_id: str | int, topic: str) -> bool:
        return self.registry.is_subscribed(self._check(user_id, topic), topic)

    def subscribers(self, topic: str) -> set[str]:
        self._check_topic(topic)
        return self.registry.subscribers(topic)

    def user_topics(self, user_id: str | int) -> set[str]:
        return self.registry.user_topics(protocol.user_id(user_id))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _call(self, user_id: str | int, topic: str, data: object) -> tuple[list[str], list[str | int]]:
        """The publish script's keys and arguments for one update (see ``lua/publish.lua``)."""
        user = self._check(user_id, topic)
        envelope = protocol.update_envelope(
            topic=topic, user=user, ts=time.time(), data_json=protocol.encode_data(data)
        )
        keys, channel = self.keys, self.keys.channel(user)
        named = [keys.seq(user, topic), keys.history(user, topic), keys.published_of(user)]
        sharded = keys.partitions > 1
        if sharded:  # a shard channel is routed like a key; a plain one stays out of KEYS (and of key ACLs)
            named.append(channel)
        return named, [
            topic, envelope.payload_head, envelope.payload_tail, envelope.message_head,
            self.config.history_size, int(self.config.history_ttl * 1000), "" if sharded else channel,
        ]

    def _check_topic(self, topic: str) -> None:
        if topic not in self._topics:
            raise ValueError(f"unknown topic {topic!r}; topics are {', '.join(self.config.topics)}")

    def _check(self, user_id: str | int, topic: str) -> str:
        self._check_topic(topic)
        return protocol.user_id(user_id)


def check_layout(client: redis.Redis, keys: Keys) -> None:
    """Record the cluster's key layout (its partition count) the first time, and refuse another one after."""
    try:
        client.set(keys.layout(), keys.partitions, nx=True)
        stored = client.get(keys.layout())
    except RedisError as exc:
        raise PublishError(f"the key layout could not be read: {exc}") from exc
    if stored is not None and int(stored) != keys.partitions:
        raise ConfigError("GATEWAY_REDIS_PARTITIONS", f"is {keys.partitions}, but the data on this Redis Cluster "
                                                      f"is laid out in {int(stored)} partitions: set it to that")
