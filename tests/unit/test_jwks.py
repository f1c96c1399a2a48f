"""The identity provider's keys: fetched from a real JWKS endpoint on 127.0.0.1, looked up without waiting."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from gateway import jwks
from gateway.jwks import JwksKeys, shown
from harness.identity_provider import IdentityProvider


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider().start()
    yield idp
    idp.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_found_by_kid_and_a_set_of_one_serves_a_token_that_names_none(provider: IdentityProvider) -> None:
    provider.key("a")
    provider.key("b", "ES256")
    provider.publish("a", "b")
    keys = JwksKeys(provider.url, 300)
    assert keys.check() == "jwks_unavailable"
    found_a = keys.find("a")  # before the background task's first fetch: fetched now
    assert provider.fetches == 1 and keys.check() is None
    found_b = keys.find("b")
    assert found_a is not None and found_a.algorithm_name == "RS256"
    assert found_b is not None and found_b.algorithm_name == "ES256"
    assert keys.find(None) is None, "two keys: a token must say which"
    provider.publish("a")
    keys.fetch()
    assert keys.find(None) is not None and keys.find("b") is None


def test_a_key_not_known_yet_is_fetched_at_once_but_made_up_ones_fetch_once_per_cooldown(
    provider: IdentityProvider,
) -> None:
    clock = Clock()
    provider.key("old")
    provider.key("new")
    provider.publish("old")
    keys = JwksKeys(provider.url, 300, clock=clock)
    keys.fetch()
    provider.publish("old", "new")  # the provider rotates: a token signed with the new key comes first
    assert keys.find("new") is not None and provider.fetches == 2
    for kid in (f"made-up-{n}" for n in range(20)):
        assert keys.find(kid) is None
    assert provider.fetches == 2, "within the cooldown an unknown kid is refused without a fetch"
    clock.now += jwks.MISS_COOLDOWN_SECONDS
    assert keys.find("made-up") is None and provider.fetches == 3
    assert keys.find(["not", "a", "kid"]) is None


def test_only_signing_keys_the_gateway_verifies_with_are_taken(provider: IdentityProvider) -> None:
    for kid, kind in (("rsa", "RS256"), ("ec", "ES256"), ("enc", "RS256"), ("mislabelled", "RS256")):
        provider.key(kid, kind)
    provider.published = [
        provider.jwk("rsa"), provider.jwk("ec"), provider.jwk("enc", use="enc"),
        provider.jwk("mislabelled", alg="ES256"),
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},  # anybody could sign
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not a key",
    ]
    keys = JwksKeys(provider.url, 300, clock=Clock())
    assert keys.fetch()
    assert {kid: keys.find(kid) is not None for kid in ("rsa", "ec", "enc", "mislabelled", "shared", "broken")} == {
        "rsa": True, "ec": True, "enc": False, "mislabelled": False, "shared": False, "broken": False}


@pytest.mark.parametrize("body", [b"<html>down for maintenance</html>", b'{"keys": []}', b'{"keys": "x"}', b"[1]",
                                  b'{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}'])
def test_a_failed_fetch_keeps_the_keys_there_were_and_is_logged_once(
    provider: IdentityProvider, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    provider.key("a")
    provider.publish("a")
    reports: list[int | None] = []
    keys = JwksKeys(provider.url, 300, reports.append, clock=Clock())
    assert keys.fetch()
    provider.body = body
    with caplog.at_level(logging.INFO, logger="gateway.jwks"):
        assert not keys.fetch() and not keys.fetch()
        provider.body, provider.failing = None, True
        assert not keys.fetch()
    assert keys.find("a") is not None and keys.check() is None
    assert reports == [1, None, None, None], "each fetch reported: the keys it brought, or a failure"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the 1 keys" in warnings[0].getMessage()
    provider.failing = False
    with caplog.at_level(logging.INFO, logger="gateway.jwks"):
        assert keys.fetch()
    assert "fetched again" in caplog.records[-1].getMessage()


def test_the_loop_fetches_at_once_retries_sooner_after_a_failure_and_stops(provider: IdentityProvider) -> None:
    provider.key("a")
    provider.publish("a")
    provider.failing = True
    keys = JwksKeys(provider.url, 0.2)
    stopping = threading.Event()
    loop = threading.Thread(target=keys.run, args=(stopping,))
    loop.start()
    try:
        assert wait(lambda: provider.fetches >= 1), "fetched at start"
        assert keys.check() == "jwks_unavailable"
        provider.failing = False
        assert wait(lambda: keys.check() is None), "retried until it answered"
        seen = provider.fetches
        assert wait(lambda: provider.fetches >= seen + 2), "then every refresh interval"
    finally:
        stopping.set()
        loop.join(5)
    assert not loop.is_alive()


def wait(condition: object, seconds: float = 10) -> bool:
    done = threading.Event()
    deadline = threading.Timer(seconds, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if condition():  # type: ignore[operator]
                return True
            done.wait(0.01)
        return False
    finally:
        deadline.cancel()


def test_the_url_is_logged_without_credentials_or_query() -> None:
    assert shown("https://user:pw@idp.example.com:8443/keys?api_key=s3cret") == "https://idp.example.com:8443/keys"
    assert shown("https://idp.example.com/.well-known/jwks.json") == "https://idp.example.com/.well-known/jwks.json"
