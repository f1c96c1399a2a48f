"""``python -m bench.sessions``: what a session's token costs, on real parts.

- **Expiry to disconnect:** clients connect to a real gunicorn with tokens
  that run out a few seconds later; the time from each token's ``exp`` plus
  ``GATEWAY_JWT_LEEWAY`` to the client's disconnect, and from ``exp`` minus
  ``GATEWAY_TOKEN_REFRESH_LEAD`` to its ``token_expiring``, as percentiles.
- **Verification CPU:** what one token check costs a worker (the bulk of a
  CONNECT or a ``refresh``): HS256 with a secret, RS256 and ES256 with keys
  from a JWKS endpoint, in this process, best of five runs.

Figures go to stdout; progress to the log.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import click
import jwt

from bench.stats import percentile
from gateway.auth import TokenVerifier, mint_token
from gateway.config import Config
from harness.identity_provider import IdentityProvider
from harness.processes import Client, GatewayProcess, RedisServer, gateway_env, unique_user, wait_for

log = logging.getLogger("bench.sessions")
LEAD, LEEWAY, TTL = 2, 1, 4


def expiry(clients: int, folder: Path) -> dict[str, list[float]]:
    """Milliseconds from each token's ``exp`` + leeway to its disconnect, and from ``exp`` - lead to its warning."""
    (folder / "redis").mkdir()
    (folder / "home").mkdir()
    redis_server = RedisServer(folder / "redis")
    redis_server.start()
    env = gateway_env(redis_server.url, "bench", folder / "home", GATEWAY_JWT_LEEWAY=str(LEEWAY),
                      GATEWAY_TOKEN_REFRESH_LEAD=str(LEAD), GATEWAY_MAX_CONNECTIONS_PER_USER=str(clients))
    gateway = GatewayProcess(env, folder / "gateway.log").start()
    late: dict[str, list[float]] = {"disconnect": [], "token_expiring": []}
    lock = threading.Lock()
    try:
        connected = [_session(gateway, late, lock) for _ in range(clients)]
        wait_for(lambda: len(late["disconnect"]) == len(connected), 30, "every session ended by its token")
    finally:
        gateway.stop()
        redis_server.stop()
    return late


def _session(gateway: GatewayProcess, late: dict[str, list[float]], lock: threading.Lock) -> Client:
    user = unique_user()
    token = gateway.token(user, ttl=TTL)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = Client(gateway.url, token, user=user)

    def at(event: str, due: float) -> Callable[..., None]:
        def seen(*_: object) -> None:
            with lock:
                late[event].append((time.time() - due) * 1000)
        return seen

    client.sio.on("disconnect", at("disconnect", exp + LEEWAY))
    client.sio.on("token_expiring", at("token_expiring", exp - LEAD))
    client.connect()
    client.subscribe("balance")
    return client


def verification() -> dict[str, float]:
    """Microseconds of CPU per token verified, by algorithm."""
    provider = IdentityProvider().start()
    try:
        provider.key("rsa", "RS256")
        provider.key("ec", "ES256")
        provider.publish("rsa", "ec")
        secret = Config.from_env({"GATEWAY_JWT_SECRET": secrets.token_hex(32)}, server=False)
        jwks = TokenVerifier(Config.from_env({"GATEWAY_JWT_JWKS_URL": provider.url}, server=False))
        cases = {
            "HS256": (TokenVerifier(secret), mint_token(secret, "7")),
            "RS256 (JWKS)": (jwks, provider.token("7", "rsa")),
            "ES256 (JWKS)": (jwks, provider.token("7", "ec")),
        }
        costs = {}
        for name, (verifier, token) in cases.items():
            verifier.identity(token)  # keys fetched once, outside the timing
            best = min(timeit.repeat(lambda v=verifier, t=token: v.identity(t), number=2000, repeat=5))
            costs[name] = best / 2000 * 1e6
        return costs
    finally:
        provider.stop()


@click.command()
@click.option("--clients", type=click.IntRange(1, 2000), default=40, show_default=True,
              help="sessions whose tokens run out")
def main(clients: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as folder:
        late = expiry(clients, Path(folder))
    for event, values in late.items():
        values = sorted(values)
        figures = ", ".join(f"p{q} {percentile(values, q / 100):.1f}" for q in (50, 95, 99))
        click.echo(f"{event}: {len(values)} sessions, ms after due: min {min(values):.1f}, {figures}, "
                   f"max {max(values):.1f}")
    for name, micros in verification().items():
        click.echo(f"verify {name}: {micros:.1f} µs per token")


if __name__ == "__main__":
    main()
