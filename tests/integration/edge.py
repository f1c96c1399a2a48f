"""One worker for raw-socket tests of the edge, its constants, and what those tests ask of it."""

from __future__ import annotations

from tests.integration.rawws import RawClient
from tests.integration.support import GatewayProcess, metric, wait_for

MAX_MESSAGE = 4096
AUTH_TIMEOUT = 2
PER_USER = 3
REFUSED_LOG = "fan-out refused a queue message"


def raw(gateway: GatewayProcess) -> RawClient:
    return RawClient(gateway.config.bind)


def errors(gateway: GatewayProcess, reason: str) -> float:
    return metric(gateway, "gateway_client_errors_total", reason=reason)


def sessions(gateway: GatewayProcess, state: str) -> float:
    return metric(gateway, "gateway_sessions", state=state)


def connected(gateway: GatewayProcess) -> RawClient:
    client = raw(gateway)
    client.open_websocket()
    return client


def authenticated(gateway: GatewayProcess, user: str) -> RawClient:
    client = connected(gateway)
    answer = client.authenticate(gateway.token(user))
    assert answer.startswith(b"40"), answer
    return client


def no_sessions_but(gateway: GatewayProcess, honest: int) -> None:
    """Wait until the worker holds only ``honest`` sessions, none of them waiting to authenticate."""
    wait_for(lambda: sessions(gateway, "engineio") == honest and sessions(gateway, "socketio") == honest
             and sessions(gateway, "unauthenticated") == 0, 10, f"only {honest} sessions held")
