"""Redis clients built one way for every process: workers, publishers, CLI.

Retries use redis-py's own :class:`~redis.retry.Retry` with jittered,
capped exponential backoff, so a Redis restart costs a command at most about
a second of retrying before it raises; nothing here loops by hand.
"""

from __future__ import annotations

from urllib.parse import urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel
from socketio.redis_manager import parse_redis_sentinel_url

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
    """Return a client for ``url`` (``redis``, ``rediss``, ``unix``, ``redis+sentinel``).

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
    if urlparse(url).scheme == "redis+sentinel":
        sentinels, service, auth = parse_redis_sentinel_url(url)
        sentinel = Sentinel(sentinels, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        primary: redis.Redis = sentinel.master_for(service or "mymaster", **options, **auth)
        return primary
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
    )
    return redis.Redis(connection_pool=pool)
