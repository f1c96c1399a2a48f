"""Tokens of an identity provider that publishes its keys at a JWKS URL: a real gunicorn fetching them from a
real HTTP endpoint on 127.0.0.1, and real Socket.IO clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from harness.identity_provider import IdentityProvider
from tests.integration.support import (
    Client,
    GatewayProcess,
    metric,
    refusal_of,
    unclean_lines,
    unique_user,
    wait_for,
)

StartGateway = Callable[..., GatewayProcess]
FETCH_FAILED = "the identity provider's keys could not be fetched"


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider().start()
    yield idp
    idp.stop()


def with_jwks(start_gateway: StartGateway, provider: IdentityProvider, wait: bool = True, **env: str) -> GatewayProcess:
    return start_gateway(wait=wait, GATEWAY_JWT_SECRET="", GATEWAY_JWT_JWKS_URL=provider.url, **env)


def connects(gateway: GatewayProcess, token: str, user: str) -> Client:
    client = Client(gateway.url, token, user=user).connect()
    assert client.subscribe("balance")["topics"]["balance"]["seq"] == 0
    return client


def test_a_rotation_needs_no_restart_and_made_up_key_ids_cannot_make_it_fetch_again_and_again(
    start_gateway: StartGateway, provider: IdentityProvider
) -> None:
    provider.key("2026-11", "RS256")
    provider.publish("2026-11")
    gateway = with_jwks(start_gateway, provider)
    user = unique_user()
    old = connects(gateway, provider.token(user, "2026-11"), user)
    # The provider rotates to an ES256 key and signs with it at once, before any refresh is due.
    provider.key("2026-12", "ES256")
    provider.publish("2026-11", "2026-12")
    new = connects(gateway, provider.token(user, "2026-12"), user)
    # A connection of the old key refreshes with a token of the new one, without reconnecting.
    token = provider.token(user, "2026-12", ttl=7200)
    assert old.call("refresh", {"token": token})["ok"] is True
    fetched = provider.fetches
    refused = metric(gateway, "gateway_connect_refused_total", reason="invalid_token")
    for n in range(30):
        assert refusal_of(gateway, provider.token(user, "2026-12", header_kid=f"made-up-{n}")) == "invalid_token"
    assert provider.fetches - fetched <= gateway.config.workers, "at most one fetch per worker for the lot"
    assert metric(gateway, "gateway_connect_refused_total", reason="invalid_token") == refused + 30
    assert refusal_of(gateway, provider.token(user, None)) == "invalid_token", "two keys: a token must name one"
    old.close()
    new.close()
    assert unclean_lines(gateway.log()) == []


def test_a_key_taken_out_of_the_set_is_refused_from_the_next_refresh(
    start_gateway: StartGateway, provider: IdentityProvider
) -> None:
    for kid in ("leaving", "staying"):
        provider.key(kid)
    provider.publish("leaving", "staying")
    gateway = with_jwks(start_gateway, provider, GATEWAY_JWT_JWKS_REFRESH="1")
    user = unique_user()
    connects(gateway, provider.token(user, "leaving"), user).close()
    provider.publish("staying")  # the key was compromised: the provider withdraws it
    withdrawn = provider.fetches
    workers = gateway.config.workers
    wait_for(lambda: provider.fetches >= withdrawn + 3 * workers, 15, "every worker refreshed since")
    token = provider.token(user, "leaving")
    assert [refusal_of(gateway, token) for _ in range(3 * workers)] == ["invalid_token"] * 3 * workers
    connects(gateway, provider.token(user, "staying"), user).close()


def test_a_worker_is_ready_once_it_has_the_keys_and_keeps_them_while_the_provider_is_down(
    start_gateway: StartGateway, provider: IdentityProvider
) -> None:
    provider.key("k")
    provider.publish("k")
    provider.failing = True  # down as the gateway starts
    gateway = with_jwks(start_gateway, provider, wait=False, GATEWAY_JWT_JWKS_REFRESH="1")
    wait_for(lambda: gateway.log().count("worker started") == gateway.config.workers, 30, "workers started")
    readiness = gateway.http("/readyz")
    assert readiness.status_code == 503 and "jwks_unavailable" in readiness.json()["reasons"]
    user = unique_user()
    assert refusal_of(gateway, provider.token(user, "k")) == "invalid_token"
    provider.failing = False
    wait_for(lambda: metric(gateway, "gateway_jwks_keys") == 1, 30, "every worker has the key once it answers")
    assert gateway.http("/readyz").status_code == 200
    provider.failing = True  # down again: the keys fetched are kept
    failed = metric(gateway, "gateway_jwks_fetches_total", result="error")
    wait_for(lambda: metric(gateway, "gateway_jwks_fetches_total", result="error") >= failed + 6, 30,
             "several refreshes failed")
    assert gateway.http("/readyz").status_code == 200
    connects(gateway, provider.token(user, "k"), user).close()
    # One warning per worker and outage, however many fetches failed; no traceback.
    log = gateway.log()
    assert gateway.config.workers <= log.count(FETCH_FAILED) <= 2 * gateway.config.workers
    assert [line for line in unclean_lines(log) if FETCH_FAILED not in line] == []


def test_audience_and_issuer_are_checked_on_provider_tokens(
    start_gateway: StartGateway, provider: IdentityProvider
) -> None:
    provider.key("k")
    provider.publish("k")
    gateway = with_jwks(start_gateway, provider, GATEWAY_JWT_AUDIENCE="push", GATEWAY_JWT_ISSUER="https://idp")
    user = unique_user()
    connects(gateway, provider.token(user, "k", aud="push", iss="https://idp"), user).close()
    assert refusal_of(gateway, provider.token(user, "k", aud="web", iss="https://idp")) == "invalid_token"
    assert refusal_of(gateway, provider.token(user, "k", aud="push", iss="https://evil")) == "invalid_token"
    assert refusal_of(gateway, provider.token(user, "k", ttl=-60, aud="push", iss="https://idp")) == "expired_token"
