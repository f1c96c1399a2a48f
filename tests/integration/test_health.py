"""/healthz, /readyz and /metrics of a running gateway, and /readyz when its Redis is away."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.support import GatewayProcess, RedisServer, wait_for


def test_health_ready_and_metrics(gateway: GatewayProcess) -> None:
    assert gateway.http("/healthz").json() == {"status": "ok"}
    assert gateway.http("/readyz").json() == {"status": "ready"}
    text = gateway.http("/metrics").text
    assert "# TYPE gateway_connections gauge" in text
    assert "gateway_send_failures_total" in text


def test_readyz_names_what_is_down_while_redis_is_away_and_recovers(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    own_redis = RedisServer(tmp_path / "redis")
    own_redis.start()
    try:
        gateway = start_gateway(redis_url=own_redis.url, GATEWAY_WORKERS="1")
        own_redis.stop()

        def not_ready() -> list[str] | None:
            answer = gateway.http("/readyz")
            return answer.json()["reasons"] if answer.status_code == 503 else None

        reasons = wait_for(not_ready, 10, "/readyz answers 503")
        assert "redis_unavailable" in reasons
        assert set(reasons) <= {"redis_unavailable", "listener_down", "heartbeat_stale"}
        assert gateway.http("/healthz").json() == {"status": "ok"}, "the process itself is alive"
        own_redis.start()
        wait_for(lambda: gateway.http("/readyz").status_code == 200, 15, "ready again once Redis is back")
    finally:
        own_redis.stop()
