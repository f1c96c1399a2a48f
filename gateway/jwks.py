"""The identity provider's signing keys, from its JWKS URL (``GATEWAY_JWT_JWKS_URL``).

Verifying a token never waits on the network for a key already known: a
background task of each worker fetches the set at start, then every
``GATEWAY_JWT_JWKS_REFRESH`` seconds, and keeps it in memory. A key
rotation needs no restart:

- a key the provider publishes before it signs with it (the usual way) is
  known from the next refresh on;
- a token naming a key not known yet has the set fetched again at once, and
  waits for that fetch; at most once per :data:`MISS_COOLDOWN_SECONDS`, so
  that tokens with made-up ``kid`` values cannot make a worker hammer the
  provider;
- a key the provider took out of the set is refused from the next refresh on.

A fetch that fails keeps the keys loaded before: it is counted
(``gateway_jwks_fetches_total{result="error"}``), logged once per run of
failures, and retried after :data:`RETRY_SECONDS`, doubled each time up to
the refresh interval. Until a first fetch succeeded the worker is not ready
(``/readyz``: ``jwks_unavailable``) and every CONNECT is refused
``invalid_token``.

Only the keys the gateway verifies with are taken: RSA for RS256 and P-256
for ES256, with ``use`` absent or ``sig``. A symmetric (``oct``) key in a
published set is ignored: anybody who can read the set could sign with it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWKSetError

log = logging.getLogger(__name__)

#: Algorithms a published key may be used with, by the key's type.
ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
#: Seconds one fetch of the set may take.
FETCH_TIMEOUT_SECONDS = 5.0
#: Fewest seconds between two fetches asked for by tokens naming an unknown key.
MISS_COOLDOWN_SECONDS = 30.0
#: Seconds before the first retry of a failed fetch; doubled each time, up to the refresh interval.
RETRY_SECONDS = 1.0

#: Told of each fetch: how many keys it brought, None when it failed (the worker's metrics).
Report = Callable[["int | None"], None]


def unreported(keys: int | None) -> None:
    """No report (a verifier outside a worker)."""


def shown(url: str) -> str:
    """The URL as logged: no user, password or query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def usable(keys: list[PyJWK]) -> list[PyJWK]:
    """The keys of a set that verify the gateway's tokens."""
    return [
        key for key in keys
        if ALGORITHMS.get(key.algorithm_name) == key.key_type and key.public_key_use in (None, "sig")
    ]


class JwksKeys:
    """The signing keys published at one JWKS URL, fetched in the background and looked up without waiting."""

    def __init__(self, url: str, refresh_seconds: float, report: Report = unreported,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self._report = report
        self._clock = clock
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS,
                                   headers={"User-Agent": "push-gateway"})
        self._keys: list[PyJWK] = []  # replaced whole by each fetch, never changed in place
        self._lock = threading.Lock()
        self._last_miss = -math.inf
        self._failing = False

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    def find(self, kid: object) -> PyJWK | None:
        """The key a token's header names (``kid``); with none named, the only key of a set of one."""
        key = self._lookup(kid)
        if key is None and self._clock() - self._last_miss >= MISS_COOLDOWN_SECONDS:
            with self._lock:  # one fetch for every token that waits on it
                if self._clock() - self._last_miss >= MISS_COOLDOWN_SECONDS:
                    self._last_miss = self._clock()
                    self.fetch()
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: object) -> PyJWK | None:
        keys = self._keys
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.key_id == kid), None)

    def fetch(self) -> bool:
        """Fetch the set once; on a failure keep the keys there were. True when it succeeded."""
        try:
            keys = usable(self._client.get_jwk_set(refresh=True).keys)
            if not keys:
                raise PyJWKSetError("no RS256 (RSA) or ES256 (P-256) signing key in the set")
        except (PyJWKClientError, PyJWKSetError, ValueError) as exc:  # ValueError: a body that is not JSON
            self._report(None)
            self._failed(exc)
            return False
        self._report(len(keys))
        self._changed(keys)
        self._keys = keys
        return True

    def _failed(self, exc: Exception) -> None:
        if self._failing:
            return
        self._failing = True
        held = f"keeping the {len(self._keys)} keys fetched before" if self._keys else "every CONNECT is refused"
        log.warning("the identity provider's keys could not be fetched from %s (%s): %s until it answers",
                    shown(self.url), exc, held)

    def _changed(self, keys: list[PyJWK]) -> None:
        before, after = {key.key_id for key in self._keys}, {key.key_id for key in keys}
        if self._failing:
            self._failing = False
            log.info("the identity provider's keys are fetched again from %s", shown(self.url))
        if before != after:
            log.info("the identity provider's signing keys from %s: %s (added %s, removed %s)", shown(self.url),
                     sorted(map(str, after)), sorted(map(str, after - before)), sorted(map(str, before - after)))

    def run(self, stopping: threading.Event) -> None:
        """Fetch at once, then every refresh interval (sooner again after a failure), until ``stopping`` is set."""
        delay, retry = 0.0, RETRY_SECONDS
        while not stopping.wait(delay):
            if self.fetch():
                delay, retry = self.refresh_seconds, RETRY_SECONDS
            else:
                delay, retry = min(retry, self.refresh_seconds), retry * 2

    def check(self) -> str | None:
        """Readiness: the worker can verify tokens once a first fetch succeeded."""
        return None if self._keys else "jwks_unavailable"
