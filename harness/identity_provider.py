"""An identity provider for the tests and the benchmark: its signing keys, and a JWKS endpoint on 127.0.0.1.

The endpoint runs in a thread of the calling process; the caller chooses
which keys the set publishes, or makes the endpoint fail, and counts the
fetches.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWKS_PATH = "/.well-known/jwks.json"


class IdentityProvider:
    """Keys by ``kid``; ``publish`` chooses the set served; ``failing`` makes the endpoint answer 503."""

    def __init__(self) -> None:
        self._private: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        #: a body served instead of the set (bytes), to play a provider that answers nonsense
        self.body: bytes | None = None
        self.failing = False
        self.fetches = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{JWKS_PATH}"

    def start(self) -> IdentityProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def key(self, kid: str, kind: str = "RS256") -> str:
        """A new private key named ``kid``: RSA (RS256) or P-256 (ES256)."""
        self._private[kid] = (kind, rsa.generate_private_key(public_exponent=65537, key_size=2048)
                              if kind == "RS256" else ec.generate_private_key(ec.SECP256R1()))
        return kid

    def jwk(self, kid: str, **extra: Any) -> dict[str, Any]:
        """The public JWK of ``kid``, with ``extra`` members (``use``, ``alg``...)."""
        kind, private = self._private[kid]
        algorithm = RSAAlgorithm if kind == "RS256" else ECAlgorithm
        return {**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, **extra}

    def public_pem(self, kid: str) -> bytes:
        public = self._private[kid][1].public_key()
        return bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def publish(self, *kids: str) -> None:
        self.published = [self.jwk(kid) for kid in kids]

    def token(self, user: str, kid: str | None, ttl: int = 3600, header_kid: str | None = None,
              **claims: Any) -> str:
        """A token for ``user`` signed with ``kid``'s key; its header names ``header_kid`` when given."""
        kind, private = self._private[kid or next(iter(self._private))]
        now = int(time.time())
        named = header_kid or kid
        headers = {"kid": named} if named else None
        return jwt.encode({"sub": user, "iat": now, "exp": now + ttl, **claims}, private, algorithm=kind,
                          headers=headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                provider.fetches += 1
                if provider.failing or self.path != JWKS_PATH:
                    self.send_error(503 if provider.failing else 404)
                    return
                body = provider.body or json.dumps({"keys": provider.published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                pass  # the tests read what they count, not an access log

        return Handler
