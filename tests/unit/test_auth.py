"""TokenVerifier and mint_token: HS256 with a secret, RS256/ES256 with a PEM public key."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.utils import base64url_encode

from gateway.auth import TokenVerifier, mint_token
from gateway.config import Config
from gateway.errors import AuthError, ConfigError
from harness.identity_provider import IdentityProvider

SECRET = "k" * 32
OTHER_SECRET = "o" * 32


def hs256_config(**environ: str) -> Config:
    return Config.from_env({"GATEWAY_JWT_SECRET": SECRET, **environ}, server=False)


def claims(**overrides: object) -> dict[str, object]:
    """Valid claims for user 4, expiring in an hour, with ``overrides`` (None removes a claim)."""
    base: dict[str, object] = {"sub": "4", "exp": int(time.time()) + 3600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def hs256(payload: dict[str, object], key: str = SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def reason_for(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    return caught.value.reason


# -- HS256 -------------------------------------------------------------------


def test_valid_token_gives_the_user_id() -> None:
    assert TokenVerifier(hs256_config()).verify(hs256(claims(sub="user-42"))) == "user-42"


def test_expired_token() -> None:
    token = hs256(claims(exp=int(time.time()) - 60))
    assert reason_for(TokenVerifier(hs256_config()), token) == "expired_token"


@pytest.mark.parametrize("token", [None, ""], ids=repr)
def test_missing_token(token: str | None) -> None:
    assert reason_for(TokenVerifier(hs256_config()), token) == "missing_token"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        hs256(claims(), key=OTHER_SECRET),
        hs256(claims(sub=None)),
        hs256(claims(exp=None)),
        hs256(claims(exp="tomorrow")),
        hs256(claims(sub=4)),
        hs256(claims(sub="")),
        jwt.encode(claims(), None, algorithm="none"),
    ],
    ids=["garbage", "three-parts", "wrong-key", "no-sub", "no-exp", "exp-text", "sub-int", "sub-empty", "alg-none"],
)
def test_invalid_token(token: str) -> None:
    assert reason_for(TokenVerifier(hs256_config()), token) == "invalid_token"


@pytest.mark.parametrize("sub", ["a b", "a/b", "../4", "x" * 129, "4\n"])
def test_sub_with_illegal_characters_is_invalid(sub: str) -> None:
    assert reason_for(TokenVerifier(hs256_config()), hs256(claims(sub=sub))) == "invalid_token"


def test_tampered_payload_is_invalid() -> None:
    header, _, signature = hs256(claims(sub="4")).split(".")
    forged_payload = hs256(claims(sub="5")).split(".")[1]
    assert reason_for(TokenVerifier(hs256_config()), f"{header}.{forged_payload}.{signature}") == "invalid_token"


def test_audience_is_checked_when_set() -> None:
    verifier = TokenVerifier(hs256_config(GATEWAY_JWT_AUDIENCE="push"))
    assert verifier.verify(hs256(claims(aud="push"))) == "4"
    assert reason_for(verifier, hs256(claims(aud="other"))) == "invalid_token"
    assert reason_for(verifier, hs256(claims())) == "invalid_token"


def test_issuer_is_checked_when_set() -> None:
    verifier = TokenVerifier(hs256_config(GATEWAY_JWT_ISSUER="https://id.example"))
    assert verifier.verify(hs256(claims(iss="https://id.example"))) == "4"
    assert reason_for(verifier, hs256(claims(iss="https://evil.example"))) == "invalid_token"
    assert reason_for(verifier, hs256(claims())) == "invalid_token"


def test_audience_and_issuer_are_ignored_when_unset() -> None:
    assert TokenVerifier(hs256_config()).verify(hs256(claims(aud="any", iss="any"))) == "4"


def test_verifier_without_a_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(Config.from_env({}, server=False))
    assert caught.value.variable == "GATEWAY_JWT_SECRET"


# -- RS256 / ES256 -----------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_config(tmp_path: Path, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Config:
    path = tmp_path / "public.pem"
    path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Config.from_env({"GATEWAY_JWT_PUBLIC_KEY": str(path)}, server=False)


def test_rs256_token_is_accepted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(sub="7"), rsa_key, algorithm="RS256")
    assert TokenVerifier(pem_config(tmp_path, rsa_key)).verify(token) == "7"


def test_es256_token_is_accepted(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(claims(sub="7"), ec_key, algorithm="ES256")
    assert TokenVerifier(pem_config(tmp_path, ec_key)).verify(token) == "7"


def test_expired_rs256_token(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 60), rsa_key, algorithm="RS256")
    assert reason_for(TokenVerifier(pem_config(tmp_path, rsa_key)), token) == "expired_token"


def test_rs256_token_does_not_pass_an_es256_verifier(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert reason_for(TokenVerifier(pem_config(tmp_path, ec_key)), token) == "invalid_token"


def test_es256_token_from_another_key_is_invalid(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert reason_for(TokenVerifier(pem_config(tmp_path, ec_key)), token) == "invalid_token"


def test_hs256_token_signed_with_the_public_key_is_invalid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    config = pem_config(tmp_path, rsa_key)
    assert config.jwt_public_key is not None
    signing_input = b".".join(
        base64url_encode(json.dumps(part).encode()) for part in ({"alg": "HS256", "typ": "JWT"}, claims())
    )
    signature = hmac.new(config.jwt_public_key.encode(), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64url_encode(signature)).decode()
    assert reason_for(TokenVerifier(config), forged) == "invalid_token"


def test_hs256_token_does_not_pass_a_public_key_verifier(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert reason_for(TokenVerifier(pem_config(tmp_path, ec_key)), hs256(claims())) == "invalid_token"


def test_p384_public_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(pem_config(tmp_path, ec.generate_private_key(ec.SECP384R1())))
    assert caught.value.variable == "GATEWAY_JWT_PUBLIC_KEY"


def test_unloadable_pem_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    config = Config.from_env({"GATEWAY_JWT_PUBLIC_KEY": str(path)}, server=False)
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(config)
    assert caught.value.variable == "GATEWAY_JWT_PUBLIC_KEY"


# -- mint_token --------------------------------------------------------------


@pytest.mark.parametrize(("user", "expected"), [(4, "4"), ("alice@example.com", "alice@example.com")])
def test_mint_token_round_trips(user: str | int, expected: str) -> None:
    config = hs256_config()
    assert TokenVerifier(config).verify(mint_token(config, user)) == expected


def test_mint_token_carries_audience_and_issuer() -> None:
    config = hs256_config(GATEWAY_JWT_AUDIENCE="push", GATEWAY_JWT_ISSUER="gw")
    assert TokenVerifier(config).verify(mint_token(config, 4)) == "4"


def test_mint_token_ttl_sets_expiry() -> None:
    config = hs256_config()
    assert reason_for(TokenVerifier(config), mint_token(config, 4, ttl_seconds=-60)) == "expired_token"


def test_mint_token_refuses_without_a_secret(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ConfigError) as caught:
        mint_token(pem_config(tmp_path, ec_key), 4)
    assert caught.value.variable == "GATEWAY_JWT_SECRET"


def test_mint_token_refuses_a_bad_user() -> None:
    with pytest.raises(ValueError):
        mint_token(hs256_config(), "a b")


# -- hostile tokens and clock skew ---------------------------------------------


@pytest.mark.parametrize("token", ["\ud800", "é.é.é", "eyJ\udcff.a.b", "a" * 8193, " " + "a" * 10, "\x00.\x00.\x00"],
                         ids=["lone-surrogate", "latin", "surrogate-in-jwt", "too-long", "space", "nul"])
def test_a_token_that_is_not_a_jwt_is_invalid(token: str) -> None:
    assert reason_for(TokenVerifier(hs256_config()), token) == "invalid_token"


@pytest.mark.parametrize("header", ['{"alg":"HS256","typ":"JWT","kid":[1]}', '[]', '"x"', '{"alg":["HS256"]}', "{"])
def test_a_token_with_a_header_pyjwt_cannot_read_is_invalid(header: str) -> None:
    body = base64url_encode(json.dumps(claims()).encode())
    token = f"{base64url_encode(header.encode()).decode()}.{body.decode()}.c2ln"
    assert reason_for(TokenVerifier(hs256_config()), token) == "invalid_token"


def test_clock_skew_within_the_leeway_is_allowed() -> None:
    verifier = TokenVerifier(hs256_config(GATEWAY_JWT_LEEWAY="5"))
    now = int(time.time())
    assert verifier.verify(hs256(claims(iat=now + 2))) == "4"  # issued by a clock 2 s ahead
    assert verifier.verify(hs256(claims(exp=now - 2))) == "4"
    assert reason_for(verifier, hs256(claims(exp=now - 30))) == "expired_token"


def test_no_leeway_is_strict() -> None:
    verifier = TokenVerifier(hs256_config(GATEWAY_JWT_LEEWAY="0"))
    assert reason_for(verifier, hs256(claims(exp=int(time.time()) - 2))) == "expired_token"


def test_a_tokens_identity_says_when_it_was_issued_when_the_token_does() -> None:
    verifier = TokenVerifier(hs256_config())
    exp = int(time.time()) + 3600
    assert verifier.identity(hs256(claims(iat=1_790_000_000, exp=exp))) == ("4", 1_790_000_000.0, float(exp))
    assert verifier.identity(hs256(claims(exp=exp))) == ("4", None, float(exp))
    user, issued, _ = verifier.identity(mint_token(hs256_config(), "7", 60))
    assert user == "7" and issued is not None and abs(issued - time.time()) < 5, "a minted token says when"


# -- keys from the identity provider's JWKS URL ------------------------------


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider().start()
    idp.key("rsa", "RS256")
    idp.key("ec", "ES256")
    idp.publish("rsa", "ec")
    yield idp
    idp.stop()


def jwks_verifier(provider: IdentityProvider, **environ: str) -> TokenVerifier:
    return TokenVerifier(Config.from_env({"GATEWAY_JWT_JWKS_URL": provider.url, **environ}, server=False))


def test_provider_tokens_of_either_key_give_their_user(provider: IdentityProvider) -> None:
    verifier = jwks_verifier(provider)
    assert verifier.verify(provider.token("7", "rsa")) == "7"
    assert verifier.verify(provider.token("8", "ec")) == "8"
    assert provider.fetches == 1, "one fetch serves both"


def test_a_token_is_verified_only_with_the_algorithm_of_the_key_it_names(provider: IdentityProvider) -> None:
    verifier = jwks_verifier(provider)
    # The key confusion: HS256 "signed" with the published RSA key as its secret, naming that key.
    forged = ".".join(hs256_parts({"alg": "HS256", "kid": "rsa"}, claims(), provider.public_pem("rsa")))
    assert reason_for(verifier, forged) == "invalid_token"
    # An ES256 signature under the RSA key's name.
    assert reason_for(verifier, provider.token("7", "ec", header_kid="rsa")) == "invalid_token"


def hs256_parts(header: dict[str, object], payload: dict[str, object], key: bytes) -> list[str]:
    head = base64url_encode(json.dumps(header).encode()).decode()
    body = base64url_encode(json.dumps(payload).encode()).decode()
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return [head, body, base64url_encode(signature).decode()]


def test_provider_refusals_say_why(provider: IdentityProvider) -> None:
    verifier = jwks_verifier(provider)
    with pytest.raises(AuthError) as caught:
        verifier.verify(provider.token("7", "rsa", header_kid="unknown"))
    assert caught.value.reason == "invalid_token" and "no published key has kid 'unknown'" in str(caught.value)
    with pytest.raises(AuthError) as caught:
        verifier.verify(provider.token("7", None))
    assert "names no key" in str(caught.value)
    assert reason_for(verifier, "not.a.jwt") == "invalid_token"
    assert reason_for(verifier, provider.token("7", "rsa", ttl=-60)) == "expired_token"
    provider.failing = True
    down = jwks_verifier(provider)
    with pytest.raises(AuthError) as caught:
        down.verify(provider.token("7", "rsa"))
    assert "not loaded yet" in str(caught.value)


def test_a_provider_token_without_a_secret_cannot_be_minted(provider: IdentityProvider) -> None:
    config = Config.from_env({"GATEWAY_JWT_JWKS_URL": provider.url}, server=False)
    with pytest.raises(ConfigError) as caught:
        mint_token(config, "7")
    assert caught.value.variable == "GATEWAY_JWT_SECRET"
