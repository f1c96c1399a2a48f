"""Prometheus metrics, summed over every gunicorn worker.

prometheus-client's multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR``
is set before this module is imported; ``gunicorn.conf.py`` sets it in the
master, so every worker writes its own files and ``/metrics`` adds them up.
Without it (a single process, tests of one app) the default registry serves.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter as Counts
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

CONNECTIONS = Gauge(
    "gateway_connections", "Open client connections.", multiprocess_mode="livesum"
)
CONNECT_REFUSED = Counter(
    "gateway_connect_refused_total", "Connections refused, by reason.", ["reason"]
)
BAD_REQUESTS = Counter(
    "gateway_bad_requests_total", "Client messages answered with an error ack, by error code.", ["error"]
)
SUBSCRIPTIONS = Gauge(
    "gateway_subscriptions", "Live (connection, topic) subscriptions, by topic.", ["topic"],
    multiprocess_mode="livesum",
)
UPDATES_RECEIVED = Counter(
    "gateway_updates_received_total", "Updates a worker received from Redis, by topic (event).", ["topic"]
)
UPDATES_DELIVERED = Counter(
    "gateway_updates_delivered_total", "Updates queued to a client connection, by topic (event).", ["topic"]
)
UPDATES_SKIPPED = Counter(
    "gateway_updates_skipped_total", "Updates not emitted because the room already had their seq.", ["topic"]
)
UPDATES_REPLAYED = Counter(
    "gateway_updates_replayed_total", "Updates sent again from history after a Redis reconnect.", ["topic"]
)
PUBLISH_TO_SEND = Histogram(
    "gateway_publish_to_send_seconds",
    "Seconds from an update's publish (its ts) to its fan-out to the connections of a worker.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
EXPIRED = Counter(
    "gateway_sessions_expired_total", "Connections ended because their token ran out without a refresh."
)
JWKS_FETCHES = Counter(
    "gateway_jwks_fetches_total", "Fetches of the identity provider's JWKS (GATEWAY_JWT_JWKS_URL), by result.",
    ["result"],
)
JWKS_KEYS = Gauge(
    "gateway_jwks_keys", "Signing keys a worker holds from the JWKS; the fewest of any worker.",
    multiprocess_mode="livemin",
)
JWKS_FETCHED = Gauge(
    "gateway_jwks_fetched_timestamp_seconds", "Unix time of a worker's last successful JWKS fetch; the oldest.",
    multiprocess_mode="livemin",
)
TOKEN_REFRESHES = Counter("gateway_token_refreshes_total", "Tokens refreshed on a live connection.")
KICKED = Counter(
    "gateway_kicked_connections_total", "Connections closed by a kick of their user (Publisher.disconnect_user)."
)
SEND_FAILURES = Counter(
    "gateway_send_failures_total", "Writes to a client that failed, by reason (client_gone is normal).", ["reason"]
)
for _reason in ("client_gone", "slow_client"):
    SEND_FAILURES.labels(reason=_reason)  # exported as 0 before the first failure
CLIENT_ERRORS = Counter(
    "gateway_client_errors_total",
    "Client input the protocol does not allow, by reason; each closed its connection.", ["reason"],
)
SESSIONS = Gauge(
    "gateway_sessions",
    "Sessions a worker holds, by state: engineio (every Engine.IO session), unauthenticated (waiting for a "
    "valid CONNECT), socketio (Socket.IO sessions known to python-socketio).", ["state"],
    multiprocess_mode="livesum",
)
QUEUE_REFUSED = Counter(
    "gateway_queue_refused_total",
    "Flask-SocketIO queue messages refused: a method GATEWAY_QUEUE_METHODS does not allow, or an emit "
    "to no user's room.", ["reason"],
)
SWEEPS = Counter(
    "gateway_sweeps_total", "Dead workers whose records were removed."
)
REDIS_RECONNECTS = Counter(
    "gateway_redis_reconnects_total", "Times the fan-out listener reconnected to Redis."
)


class FanoutTally:
    """The fan-out's per-update counts, added up in memory and written in one go.

    A labelled counter of the multiprocess mode takes a lock and writes a
    memory-mapped file at every increment; at thousands of updates a second
    that was a tenth of a worker's CPU. The listener adds here and calls
    :meth:`flush` a few times a second.
    """

    def __init__(self) -> None:
        self.received: Counts[str] = Counts()
        self.delivered: Counts[str] = Counts()
        self.skipped: Counts[str] = Counts()
        self.latencies: list[float] = []

    def __bool__(self) -> bool:
        """Whether anything waits to be written."""
        return bool(self.received or self.latencies)

    def flush(self) -> None:
        for counts, counter in (
            (self.received, UPDATES_RECEIVED), (self.delivered, UPDATES_DELIVERED), (self.skipped, UPDATES_SKIPPED),
        ):
            for topic, count in counts.items():
                counter.labels(topic=topic).inc(count)
            counts.clear()
        observe_all(PUBLISH_TO_SEND, self.latencies)
        self.latencies.clear()


def observe_all(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe`` of every one of ``amounts``, written in one go.

    One increment of each bucket that got any, and one of the sum, where
    ``observe`` writes two memory-mapped values per amount. It reaches
    prometheus_client's ``_upper_bounds``, ``_buckets`` and ``_sum``, which
    the library contract test checks against ``observe``.
    """
    if not amounts:
        return
    bounds = histogram._upper_bounds
    for index, count in Counts(bisect.bisect_left(bounds, amount) for amount in amounts).items():
        histogram._buckets[index].inc(count)
    histogram._sum.inc(sum(amounts))


class PublishedCollector(Collector):
    """``gateway_updates_published_total{topic}``: what every publisher published.

    Publishers run in other processes; the publish script counts in Redis,
    and this reads the count at scrape time (absent while Redis is away).
    """

    def __init__(self, published: Callable[[], dict[str, int]]) -> None:
        self.published = published

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gateway_updates_published",
            "Updates published by backend jobs, by topic (all instances).",
            labels=["topic"],
        )
        try:
            counts = self.published()
        except RedisError:
            return
        for topic, count in sorted(counts.items()):
            family.add_metric([topic], count)
        yield family


def render(published: Callable[[], dict[str, int]]) -> tuple[bytes, str]:
    """The exposition text of every worker's metrics and the publish counts, and its content type."""
    workers = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers)
    shared = CollectorRegistry()
    shared.register(PublishedCollector(published))
    return generate_latest(workers) + generate_latest(shared), CONTENT_TYPE_LATEST


def jwks_fetched(keys: int | None) -> None:
    """One fetch of the identity provider's JWKS: the keys it brought, None when it failed."""
    if keys is None:
        JWKS_FETCHES.labels(result="error").inc()
        return
    JWKS_FETCHES.labels(result="ok").inc()
    JWKS_KEYS.set(keys)
    JWKS_FETCHED.set(time.time())
