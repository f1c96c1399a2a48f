"""Gateway configuration: one frozen dataclass, read from ``GATEWAY_*`` here only.

Every field names its variable, default and meaning in its metadata; a bad
value raises :class:`~gateway.errors.ConfigError` naming the variable, which
every entry point turns into one line and a non-zero exit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlparse

from gateway.errors import ConfigError
from gateway.protocol import DEFAULT_TOPICS, QUEUE_METHODS, parse_topics

N = TypeVar("N", int, float)

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster"})
#: Schemes of a Redis Cluster's seed nodes.
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = frozenset({"websocket", "polling"})
#: Key prefixes: they go into SCAN patterns, so no glob characters.
KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Shortest HS256 secret accepted: the length of the SHA-256 output (RFC 7518 3.2).
MIN_SECRET_BYTES = 32
#: Hosts a JWKS may be fetched from over plain http: this machine's.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _number(convert: Callable[[str], N], what: str, low: N, high: N, unit: str = "") -> Callable[[str], N]:
    def parse(value: str) -> N:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}{unit}, got {value}")
        return number

    return parse


def _whole(low: int, high: int) -> Callable[[str], int]:
    return _number(int, "a whole number", low, high)


def _seconds(low: float, high: float) -> Callable[[str], float]:
    return _number(float, "a number of seconds", low, high, " seconds")


def _redis_url(value: str) -> str:
    url = value.strip()
    parts = urlparse(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(sorted(REDIS_SCHEMES))}, got {parts.scheme or 'none'!r}")
    if parts.scheme in CLUSTER_SCHEMES:
        cluster_nodes(url)
    return url


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a ``redis+cluster://[user:password@]host:port[,host:port...]`` URL."""
    parts = urlparse(url)
    hosts = parts.netloc.rpartition("@")[2]
    if parts.path not in ("", "/", "/0") or parts.query:
        raise ValueError("a Redis Cluster URL takes no database (always 0) and no options")
    nodes = []
    for node in hosts.split(","):
        host, sep, port = node.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"every seed node must be HOST:PORT, got {node!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _partitions(value: str) -> int:
    count = _whole(64, 16384)(value)
    if count & (count - 1):
        raise ValueError(f"must be a power of two from 64 to 16384, got {count}")
    return count


def _bind(value: str) -> str:
    if value.startswith("unix:"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT or unix:PATH, got {value!r}")
    return value


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(part.strip() for part in value.split(",") if part.strip())
    if not origins:
        raise ValueError("must list at least one origin, or be unset for same origin only")
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' allows every origin and cannot be combined with others")
    for origin in origins:
        if origin != "*" and urlparse(origin).scheme not in ("http", "https"):
            raise ValueError(f"{origin!r} is not an http(s) origin")
    return origins


def _transports(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = set(names) - TRANSPORTS
    if unknown or not names:
        raise ValueError(f"must be a comma list of websocket, polling; got {value!r}")
    return names


def _names(allowed: frozenset[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        unknown = sorted(set(names) - allowed)
        if unknown or not names:
            raise ValueError(f"must be a comma list of {', '.join(sorted(allowed))}; got {value!r}")
        return names

    return parse


def _prefix(value: str) -> str:
    if KEY_PREFIX_RE.fullmatch(value.strip()) is None:
        raise ValueError(f"must be letters, digits, '.', '_' or '-' (at most 64), got {value!r}")
    return value.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.upper() in allowed:
            return value.upper()
        if value.lower() in allowed:
            return value.lower()
        raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")

    return parse


def _pem_file(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from None
    if "-----BEGIN PUBLIC KEY-----" not in text:
        raise ValueError(f"{path!r} is not a PEM public key")
    return text


def _jwks_url(value: str) -> str:
    """An https URL; http only to this machine (a provider's agent on the loopback, the tests)."""
    url = value.strip()
    parts = urlparse(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an https:// URL, got {url!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"must be https:// (http:// only to this machine), got {parts.scheme}://{parts.hostname}")
    return url


def _mask_password(url: str) -> str:
    """Hide a password given as ``user:password@`` or as a query argument (``password=``, ``sentinel_password=``)."""
    parsed = urlparse(url)
    netloc = parsed.netloc
    if parsed.password:
        netloc = netloc.replace(f":{parsed.password}@", ":***@", 1)
    query = "&".join(
        f"{part.partition('=')[0]}=***" if "password" in part.partition("=")[0] else part
        for part in parsed.query.split("&") if part
    )
    return parsed._replace(netloc=netloc, query=query).geturl()


def _cpu_count() -> int:
    return os.cpu_count() or 1


def setting(variable: str, parse: Callable[[str], Any], help: str, **kwargs: Any) -> Any:
    """A config field bound to its environment variable, parser and description."""
    return field(metadata={"variable": variable, "parse": parse, "help": help}, **kwargs)


@dataclass(frozen=True)
class Config:
    """The gateway's settings. Build with :meth:`from_env`; never mutated."""

    redis_url: str | None = setting(
        "GATEWAY_REDIS_URL", _redis_url,
        "Redis URL: redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://h1:p1,h2:p2", default=None
    )
    redis_partitions: int = setting(
        "GATEWAY_REDIS_PARTITIONS", _partitions,
        "partitions of users on Redis Cluster (a power of two, 64 to 16384); fixed once data is written",
        default=1024,
    )
    bind: str = setting("GATEWAY_BIND", _bind, "gunicorn bind address", default="127.0.0.1:8000")
    workers: int = setting("GATEWAY_WORKERS", _whole(1, 256), "gunicorn worker processes", default_factory=_cpu_count)
    jwt_secret: str | None = setting(
        "GATEWAY_JWT_SECRET", _text, "HS256 key for client tokens", default=None, repr=False
    )
    jwt_public_key: str | None = setting(
        "GATEWAY_JWT_PUBLIC_KEY", _pem_file, "path to a PEM public key (RS256 or ES256)", default=None, repr=False
    )
    jwt_jwks_url: str | None = setting(
        "GATEWAY_JWT_JWKS_URL", _jwks_url, "the identity provider's JWKS URL (RS256 and ES256 keys)", default=None
    )
    jwt_jwks_refresh: float = setting(
        "GATEWAY_JWT_JWKS_REFRESH", _seconds(1, 86400), "seconds between two fetches of the JWKS", default=300.0
    )
    jwt_audience: str | None = setting("GATEWAY_JWT_AUDIENCE", _text, "required token audience", default=None)
    jwt_issuer: str | None = setting("GATEWAY_JWT_ISSUER", _text, "required token issuer", default=None)
    topics: tuple[str, ...] = setting(
        "GATEWAY_TOPICS", parse_topics, "private per-user topics", default=DEFAULT_TOPICS
    )
    cors_origins: tuple[str, ...] | None = setting(
        "GATEWAY_CORS_ORIGINS", _origins, "allowed browser origins; unset: same origin only", default=None
    )
    transports: tuple[str, ...] = setting(
        "GATEWAY_TRANSPORTS", _transports, "Engine.IO transports; polling needs one worker", default=("websocket",)
    )
    ping_interval: float = setting("GATEWAY_PING_INTERVAL", _seconds(1, 3600), "seconds between pings", default=25.0)
    ping_timeout: float = setting("GATEWAY_PING_TIMEOUT", _seconds(1, 3600), "seconds to wait for a pong", default=60.0)
    max_message_bytes: int = setting(
        "GATEWAY_MAX_MESSAGE_BYTES", _whole(256, 16 * 1024 * 1024), "largest inbound client message", default=65536
    )
    send_queue_limit: int = setting(
        "GATEWAY_SEND_QUEUE_LIMIT", _whole(16, 1_000_000), "packets queued for one client before it is cut off",
        default=1000,
    )
    heartbeat_seconds: float = setting(
        "GATEWAY_HEARTBEAT_SECONDS", _seconds(0.1, 3600), "worker liveness refresh", default=5.0
    )
    key_prefix: str = setting("GATEWAY_KEY_PREFIX", _prefix, "prefix of every Redis key the gateway owns", default="gw")
    history_size: int = setting(
        "GATEWAY_HISTORY_SIZE", _whole(1, 100_000), "updates kept per user and topic", default=100
    )
    history_ttl: float = setting(
        "GATEWAY_HISTORY_TTL", _seconds(1, 90 * 86400), "seconds a user's history outlives their last update",
        default=86400.0,
    )
    auth_timeout: float = setting(
        "GATEWAY_AUTH_TIMEOUT", _seconds(1, 3600),
        "seconds a new WebSocket may stay open without a valid Socket.IO CONNECT", default=10.0,
    )
    max_connections_per_user: int = setting(
        "GATEWAY_MAX_CONNECTIONS_PER_USER", _whole(0, 100_000),
        "live connections of one user across the whole deployment; 0: no limit", default=10,
    )
    token_refresh_lead: float = setting(
        "GATEWAY_TOKEN_REFRESH_LEAD", _seconds(0, 86400), "seconds before exp that the server sends token_expiring",
        default=60.0,
    )
    jwt_leeway: float = setting(
        "GATEWAY_JWT_LEEWAY", _seconds(0, 300), "seconds of clock skew allowed on exp, nbf, iat", default=5.0
    )
    queue_methods: tuple[str, ...] = setting(
        "GATEWAY_QUEUE_METHODS", _names(QUEUE_METHODS),
        "what Flask-SocketIO queue messages may ask: emit (to a room), broadcast, enter_room, leave_room, "
        "close_room, disconnect, callback", default=("emit",),
    )
    log_level: str = setting("GATEWAY_LOG_LEVEL", _choice(*LOG_LEVELS), "log level", default="INFO")
    log_format: str = setting("GATEWAY_LOG_FORMAT", _choice("text", "json"), "log format: text or json", default="text")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, server: bool = True) -> Config:
        """Read and validate every ``GATEWAY_*`` variable.

        ``server=True`` (workers, gunicorn) also requires the Redis URL and a
        token key; a publisher needs neither from the environment.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            variable = spec.metadata["variable"]
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(variable, str(exc)) from None
        config = cls(**values)
        config.validate(server=server)
        return config

    def validate(self, *, server: bool = True) -> None:
        """Check the rules that join several variables."""
        if "polling" in self.transports and self.workers > 1:
            raise ConfigError(
                "GATEWAY_TRANSPORTS",
                f"polling needs GATEWAY_WORKERS=1 (got {self.workers}): a polling session must stay on one worker",
            )
        if self.ping_timeout < self.ping_interval / 10:
            raise ConfigError("GATEWAY_PING_TIMEOUT", "is too short for GATEWAY_PING_INTERVAL")
        keys = [name for name, value in (("GATEWAY_JWT_SECRET", self.jwt_secret),
                                         ("GATEWAY_JWT_PUBLIC_KEY", self.jwt_public_key),
                                         ("GATEWAY_JWT_JWKS_URL", self.jwt_jwks_url)) if value is not None]
        if len(keys) > 1:
            raise ConfigError(keys[-1], f"set only one of {' and '.join(keys)}")
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError("GATEWAY_JWT_SECRET", f"must be at least {MIN_SECRET_BYTES} bytes for HS256")
        if self.cluster and ("{" in self.key_prefix or "}" in self.key_prefix):
            raise ConfigError("GATEWAY_KEY_PREFIX", "must not contain { or } on Redis Cluster (they make hash tags)")
        if not server:
            return
        if self.cluster:
            raise ConfigError("GATEWAY_REDIS_URL", "Redis Cluster serves publishers and `gateway kick` in this "
                              "version; run the gateway on a single Redis or Sentinel")
        if self.redis_url is None:
            raise ConfigError("GATEWAY_REDIS_URL", "is not set (make run starts a local Redis for you)")
        if not keys:
            raise ConfigError("GATEWAY_JWT_SECRET", "is not set: set it, GATEWAY_JWT_PUBLIC_KEY or "
                              "GATEWAY_JWT_JWKS_URL")

    @property
    def cluster(self) -> bool:
        """Whether Redis is a Redis Cluster (``redis+cluster://``)."""
        return self.redis_url is not None and urlparse(self.redis_url).scheme in CLUSTER_SCHEMES

    @property
    def partitions(self) -> int:
        """Partitions of the key layout: ``GATEWAY_REDIS_PARTITIONS`` on a cluster, else one."""
        return self.redis_partitions if self.cluster else 1

    def describe(self) -> dict[str, str]:
        """The effective settings by variable, secrets masked."""
        shown = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not spec.repr and value is not None:
                value = "(set)"
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif spec.name == "redis_url" and value is not None:
                value = _mask_password(value)
            shown[spec.metadata["variable"]] = "" if value is None else str(value)
        return shown
