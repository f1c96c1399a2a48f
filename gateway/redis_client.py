"""Redis clients built one way for every process: workers, publishers, CLI.

Retries use redis-py's own :class:`~redis.retry.Retry` with jittered,
capped exponential backoff, so a Redis restart costs a command at most about
a second of retrying before it raises; nothing here loops by hand.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel
from socketio.redis_manager import parse_redis_sentinel_url

from gateway.config import CLUSTER_SCHEMES, cluster_nodes

#: Seconds to wait for a TCP connect or for a command's reply.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
#: A connection idle this long is pinged before use.
HEALTH_CHECK_INTERVAL = 10
#: Connections one client may open; past that a command waits for one to be
#: free (up to POOL_WAIT_SECONDS) rather than failing, as redis-py's default
#: pool (100, then MaxConnectionsError) does in a storm of connects.
MAX_CONNECTIONS = 200
POOL_WAIT_SECONDS = 5.0


def retry_policy(retries: int = 4) -> Retry:
    """Up to ``retries`` retries, 50 ms growing to 1 s, with full jitter."""
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=1.0),
        retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionResetError),
    )


def connect(
    url: str, *, name: str, command_timeout: float | None = COMMAND_TIMEOUT, retries: int = 4
) -> redis.Redis:
    """Return a client for ``url`` (``redis``, ``rediss``, ``unix``, ``redis+sentinel``, ``redis+cluster``).

    No connection is opened until the first command. ``retries=0`` for
    callers that must not wait, like gunicorn's master in a hook.
    """
    options = {
        "client_name": name,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": command_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": retry_policy(retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    }
    scheme = urlparse(url).scheme
    if scheme in CLUSTER_SCHEMES:
        return _cluster(url, name, command_timeout, retries)
    if scheme == "redis+sentinel":
        sentinels, service, auth = parse_redis_sentinel_url(url)
        sentinel = Sentinel(sentinels, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        primary: redis.Redis = sentinel.master_for(service or "mymaster", **options, **auth)
        return primary
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
    )
    return redis.Redis(connection_pool=pool)


def _cluster(url: str, name: str, command_timeout: float | None, retries: int) -> redis.Redis:
    """A Redis Cluster client from its seed nodes; it learns the rest of the cluster from them.

    redis-py's cluster client takes no ``health_check_interval`` and no
    ``retry_on_error`` (it would drop them unsaid): its retry policy is
    given whole, and redirections (MOVED, ASK) are followed by the client.
    """
    parts = urlparse(url)
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":")
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+cluster",
        client_name=name,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=command_timeout,
        retry=retry_policy(retries),
        max_connections=MAX_CONNECTIONS,
    )
    return cast(redis.Redis, cluster)  # the same commands, routed by key slot
