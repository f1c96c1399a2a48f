"""Client authentication: a JWT whose ``sub`` is the user, checked with PyJWT.

The user of a connection is always the token's user; nothing a client sends
later can name another.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway import protocol
from gateway.config import Config
from gateway.errors import AuthError, Code, ConfigError
from gateway.jwks import JwksKeys, Report, unreported

#: Claims every token must carry.
REQUIRED_CLAIMS = ("sub", "exp")
#: Longest token accepted; a JWT the gateway verifies is a few hundred bytes.
MAX_TOKEN_CHARS = 8192


def _verification_key(config: Config) -> tuple[object, list[str]]:
    if config.jwt_secret is not None:
        return config.jwt_secret, ["HS256"]
    if config.jwt_public_key is None:
        raise ConfigError("GATEWAY_JWT_SECRET", "is not set: set it, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL")
    try:
        key = load_pem_public_key(config.jwt_public_key.encode())
    except ValueError as exc:
        raise ConfigError("GATEWAY_JWT_PUBLIC_KEY", f"cannot load the key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, ["ES256"]
    raise ConfigError("GATEWAY_JWT_PUBLIC_KEY", "must be an RSA key (RS256) or a P-256 EC key (ES256)")


class Identity(NamedTuple):
    """What a valid token says: its user, when it was issued (``iat``; None when it does not say), and when it
    runs out (``exp``), in Unix seconds."""

    user: str
    issued_at: float | None
    expires_at: float


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class TokenVerifier:
    """Turns a token into a user id, or raises :class:`AuthError`, and nothing else.

    Whatever a client sends as its token (any length, any characters) ends in
    one of the contract's reasons: ``missing_token``, ``expired_token`` or
    ``invalid_token``. ``exp``, ``nbf`` and ``iat`` allow ``GATEWAY_JWT_LEEWAY``
    seconds of clock skew.
    """

    def __init__(self, config: Config, report: Report = unreported) -> None:
        #: the identity provider's published keys, when they come from a JWKS URL (fetched by a background task;
        #: each fetch told to ``report``)
        self.jwks = None if config.jwt_jwks_url is None else JwksKeys(
            config.jwt_jwks_url, config.jwt_jwks_refresh, report)
        self._key, self._algorithms = (None, []) if self.jwks is not None else _verification_key(config)
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._leeway = config.jwt_leeway

    def verify(self, token: str | None) -> str:
        """The user of ``token``."""
        return self.identity(token).user

    def identity(self, token: str | None) -> Identity:
        """The user of ``token``, when it was issued and when it runs out."""
        if not token:
            raise AuthError(Code.MISSING_TOKEN)
        if not token.isascii() or len(token) > MAX_TOKEN_CHARS:
            # A JWT is ASCII (base64url and dots); PyJWT would raise UnicodeEncodeError on a lone surrogate.
            raise AuthError(Code.INVALID_TOKEN, "not a JWT")
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(Code.EXPIRED_TOKEN) from None
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            # ValueError and TypeError: what PyJWT lets through of a header or payload it cannot read.
            raise AuthError(Code.INVALID_TOKEN, str(exc)) from None
        try:
            user = protocol.user_id(claims["sub"])
        except ValueError as exc:
            raise AuthError(Code.INVALID_TOKEN, str(exc)) from None
        return Identity(user, _seconds(claims.get("iat")), float(claims["exp"]))

    def _key_for(self, token: str) -> tuple[object, list[str]]:
        """The key that verifies ``token``, and the one algorithm it may be signed with."""
        if self.jwks is None:
            return self._key, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        found = self.jwks.find(kid)
        if found is None:
            why = "the identity provider's keys are not loaded yet" if not self.jwks.loaded else (
                "the token names no key (kid)" if kid is None else f"no published key has kid {str(kid)[:64]!r}")
            raise AuthError(Code.INVALID_TOKEN, why)
        return found.key, [found.algorithm_name]


def mint_token(config: Config, user: str | int, ttl_seconds: int = 3600) -> str:
    """Sign a token for ``user`` with the configured HS256 secret (tests, demo, operators)."""
    if config.jwt_secret is None:
        raise ConfigError("GATEWAY_JWT_SECRET", "is needed to mint tokens (an RS256/ES256 key only verifies)")
    now = int(time.time())
    claims: dict[str, object] = {"sub": protocol.user_id(user), "iat": now, "exp": now + ttl_seconds}
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    return jwt.encode(claims, config.jwt_secret, algorithm="HS256")
