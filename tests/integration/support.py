"""The integration tests' real parts: the harness that the benchmark uses too (``harness.processes``)."""

from harness.processes import (
    REPO,
    SECRET,
    UNCLEAN,
    Client,
    GatewayProcess,
    RedisServer,
    connection_keys,
    free_port,
    gateway_env,
    metric,
    rss_bytes,
    samples,
    unclean_lines,
    unique_user,
    wait_for,
)

__all__ = [
    "REPO", "SECRET", "UNCLEAN", "Client", "GatewayProcess", "RedisServer", "connection_keys", "free_port",
    "gateway_env", "metric", "rss_bytes", "samples", "unclean_lines", "unique_user", "wait_for",
]
