"""The operator's HTTP endpoints: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError

from gateway import metrics

log = logging.getLogger(__name__)

#: A check returns ``None`` when ready, else the reason it is not: a short code
#: (``redis_unavailable``, ``listener_down``, ``heartbeat_stale``, ``jwks_unavailable``).
Check = Callable[[], "str | None"]


def blueprint(checks: list[Check], published: Callable[[], dict[str, int]]) -> Blueprint:
    """Routes for liveness, readiness (every check passes) and metrics."""
    routes = Blueprint("health", __name__)

    @routes.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @routes.get("/readyz")
    def readyz() -> tuple[Response, int]:
        reasons = [reason for reason in (check() for check in checks) if reason]
        if reasons:
            return jsonify(status="not ready", reasons=reasons), 503
        return jsonify(status="ready"), 200

    @routes.get("/metrics")
    def metrics_text() -> Response:
        body, content_type = metrics.render(published)
        return Response(body, content_type=content_type)

    return routes


def redis_answers(ping: Callable[[], object]) -> Check:
    """Ready while Redis answers a PING. The reason shown is a code; what Redis said (hosts, ports) goes to
    the log at DEBUG, since /readyz is public behind the load balancer."""

    def check() -> str | None:
        try:
            ping()
        except RedisError as exc:
            log.debug("readiness: Redis does not answer: %s", exc)
            return "redis_unavailable"
        return None

    return check
