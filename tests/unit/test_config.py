"""Config.from_env: defaults, one failing line per bad variable, joint rules, masking."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import Config, cluster_nodes
from gateway.errors import ConfigError

SECRET = "s" * 32
SERVER_ENV = {"GATEWAY_REDIS_URL": "redis://localhost:6379/0", "GATEWAY_JWT_SECRET": SECRET}


def load(**overrides: str) -> Config:
    """A server config from the minimal valid environment plus ``overrides``."""
    return Config.from_env({**SERVER_ENV, "GATEWAY_WORKERS": "2", **overrides}, server=True)


def refused(environ: dict[str, str], *, server: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ, server=server)
    return caught.value


def test_defaults() -> None:
    config = Config.from_env(SERVER_ENV)
    assert config.bind == "127.0.0.1:8000"
    assert config.workers == (os.cpu_count() or 1)
    assert config.topics == ("balance", "positions", "pnl", "orders")
    assert config.cors_origins is None
    assert config.transports == ("websocket",)
    assert (config.ping_interval, config.ping_timeout) == (25.0, 60.0)
    assert config.max_message_bytes == 65536
    assert config.heartbeat_seconds == 5.0
    assert config.key_prefix == "gw"
    assert config.history_size == 100
    assert (config.log_level, config.log_format) == ("INFO", "text")
    assert (config.jwt_audience, config.jwt_issuer, config.jwt_public_key) == (None, None, None)
    assert (config.auth_timeout, config.max_connections_per_user, config.jwt_leeway) == (10.0, 10, 5.0)
    assert config.queue_methods == ("emit",)


def test_empty_variable_counts_as_unset() -> None:
    assert load(GATEWAY_BIND="", GATEWAY_TOPICS="").bind == "127.0.0.1:8000"


def test_publisher_config_needs_nothing_from_the_environment() -> None:
    config = Config.from_env({}, server=False)
    assert config.redis_url is None
    assert config.jwt_secret is None


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("GATEWAY_REDIS_URL", "rediss://h:6380/1", "redis_url", "rediss://h:6380/1"),
        ("GATEWAY_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("GATEWAY_REDIS_URL", "redis+sentinel://s1:26379/mymaster", "redis_url", "redis+sentinel://s1:26379/mymaster"),
        ("GATEWAY_BIND", "unix:/run/gw.sock", "bind", "unix:/run/gw.sock"),
        ("GATEWAY_BIND", "0.0.0.0:9000", "bind", "0.0.0.0:9000"),
        ("GATEWAY_TOPICS", "a,b", "topics", ("a", "b")),
        (
            "GATEWAY_CORS_ORIGINS",
            "https://a.example, http://b.example",
            "cors_origins",
            ("https://a.example", "http://b.example"),
        ),
        ("GATEWAY_CORS_ORIGINS", "*", "cors_origins", ("*",)),
        ("GATEWAY_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("GATEWAY_LOG_FORMAT", "JSON", "log_format", "json"),
        ("GATEWAY_HEARTBEAT_SECONDS", "0.5", "heartbeat_seconds", 0.5),
        ("GATEWAY_SEND_QUEUE_LIMIT", "64", "send_queue_limit", 64),
    ],
)
def test_good_values_are_parsed(variable: str, value: str, attribute: str, expected: object) -> None:
    assert getattr(load(**{variable: value}), attribute) == expected


BAD_VALUES = [
    ("GATEWAY_REDIS_URL", "http://localhost:6379"),
    ("GATEWAY_REDIS_URL", "localhost:6379"),
    ("GATEWAY_REDIS_URL", "   "),
    ("GATEWAY_BIND", "8000"),
    ("GATEWAY_BIND", ":8000"),
    ("GATEWAY_BIND", "localhost:0"),
    ("GATEWAY_BIND", "localhost:65536"),
    ("GATEWAY_BIND", "localhost:http"),
    ("GATEWAY_WORKERS", "0"),
    ("GATEWAY_WORKERS", "257"),
    ("GATEWAY_WORKERS", "two"),
    ("GATEWAY_WORKERS", "1.5"),
    ("GATEWAY_JWT_SECRET", "   "),
    ("GATEWAY_JWT_PUBLIC_KEY", "/nonexistent/key.pem"),
    ("GATEWAY_REDIS_URL", "redis+cluster://"),
    ("GATEWAY_REDIS_URL", "redis+cluster://h1:7000,h2"),
    ("GATEWAY_REDIS_URL", "redis+cluster://h1:7000/3"),
    ("GATEWAY_REDIS_PARTITIONS", "1000"),
    ("GATEWAY_REDIS_PARTITIONS", "32"),
    ("GATEWAY_REDIS_PARTITIONS", "32768"),
    ("GATEWAY_JWT_JWKS_URL", "ftp://idp.example.com/jwks.json"),
    ("GATEWAY_JWT_JWKS_URL", "http://idp.example.com/jwks.json"),
    ("GATEWAY_JWT_JWKS_URL", "https://"),
    ("GATEWAY_JWT_JWKS_URL", "idp.example.com/jwks.json"),
    ("GATEWAY_JWT_JWKS_REFRESH", "0"),
    ("GATEWAY_JWT_JWKS_REFRESH", "soon"),
    ("GATEWAY_JWT_AUDIENCE", "   "),
    ("GATEWAY_JWT_ISSUER", "   "),
    ("GATEWAY_TOPICS", " , "),
    ("GATEWAY_TOPICS", "Balance"),
    ("GATEWAY_TOPICS", "balance,bal_ance"),
    ("GATEWAY_CORS_ORIGINS", " , "),
    ("GATEWAY_CORS_ORIGINS", "example.com"),
    ("GATEWAY_CORS_ORIGINS", "*,https://a.example"),
    ("GATEWAY_CORS_ORIGINS", "ftp://a.example"),
    ("GATEWAY_TRANSPORTS", "websockets"),
    ("GATEWAY_TRANSPORTS", " , "),
    ("GATEWAY_TRANSPORTS", "websocket,long-polling"),
    ("GATEWAY_PING_INTERVAL", "0"),
    ("GATEWAY_PING_INTERVAL", "3601"),
    ("GATEWAY_PING_INTERVAL", "soon"),
    ("GATEWAY_PING_INTERVAL", "nan"),
    ("GATEWAY_PING_TIMEOUT", "0.5"),
    ("GATEWAY_PING_TIMEOUT", "inf"),
    ("GATEWAY_PING_TIMEOUT", "x"),
    ("GATEWAY_MAX_MESSAGE_BYTES", "255"),
    ("GATEWAY_MAX_MESSAGE_BYTES", str(16 * 1024 * 1024 + 1)),
    ("GATEWAY_MAX_MESSAGE_BYTES", "64k"),
    ("GATEWAY_SEND_QUEUE_LIMIT", "0"),
    ("GATEWAY_HISTORY_TTL", "0"),
    ("GATEWAY_HISTORY_TTL", "forever"),
    ("GATEWAY_SEND_QUEUE_LIMIT", "lots"),
    ("GATEWAY_HEARTBEAT_SECONDS", "0"),
    ("GATEWAY_HEARTBEAT_SECONDS", "-1"),
    ("GATEWAY_HEARTBEAT_SECONDS", "often"),
    ("GATEWAY_KEY_PREFIX", "   "),
    ("GATEWAY_KEY_PREFIX", "gw:*"),
    ("GATEWAY_KEY_PREFIX", "g w"),
    ("GATEWAY_AUTH_TIMEOUT", "0"),
    ("GATEWAY_AUTH_TIMEOUT", "never"),
    ("GATEWAY_MAX_CONNECTIONS_PER_USER", "-1"),
    ("GATEWAY_MAX_CONNECTIONS_PER_USER", "ten"),
    ("GATEWAY_TOKEN_REFRESH_LEAD", "-1"),
    ("GATEWAY_TOKEN_REFRESH_LEAD", "soon"),
    ("GATEWAY_JWT_LEEWAY", "-1"),
    ("GATEWAY_JWT_LEEWAY", "301"),
    ("GATEWAY_QUEUE_METHODS", "emit,join"),
    ("GATEWAY_QUEUE_METHODS", " , "),
    ("GATEWAY_HISTORY_SIZE", "0"),
    ("GATEWAY_HISTORY_SIZE", "100001"),
    ("GATEWAY_HISTORY_SIZE", "many"),
    ("GATEWAY_LOG_LEVEL", "verbose"),
    ("GATEWAY_LOG_LEVEL", "warn"),
    ("GATEWAY_LOG_FORMAT", "xml"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES, ids=[f"{v}={x!r}" for v, x in BAD_VALUES])
def test_bad_value_names_its_variable(variable: str, value: str) -> None:
    error = refused({**SERVER_ENV, "GATEWAY_WORKERS": "2", variable: value})
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")
    assert error.reason


def test_bad_value_table_covers_every_variable() -> None:
    variables = {spec.metadata["variable"] for spec in dataclasses.fields(Config)}
    assert variables == {variable for variable, _ in BAD_VALUES}


def test_polling_with_several_workers_names_transports() -> None:
    error = refused({**SERVER_ENV, "GATEWAY_TRANSPORTS": "websocket,polling", "GATEWAY_WORKERS": "2"})
    assert error.variable == "GATEWAY_TRANSPORTS"
    assert str(error).startswith("GATEWAY_TRANSPORTS: ")


def test_polling_with_one_worker_is_accepted() -> None:
    config = load(GATEWAY_TRANSPORTS="websocket,polling", GATEWAY_WORKERS="1")
    assert config.transports == ("websocket", "polling")


def test_ping_timeout_far_below_interval_is_refused() -> None:
    error = refused({**SERVER_ENV, "GATEWAY_PING_INTERVAL": "100", "GATEWAY_PING_TIMEOUT": "5"})
    assert error.variable == "GATEWAY_PING_TIMEOUT"


@pytest.mark.parametrize("missing", ["GATEWAY_REDIS_URL", "GATEWAY_JWT_SECRET"])
def test_server_needs_redis_url_and_token_key(missing: str) -> None:
    environ = {k: v for k, v in SERVER_ENV.items() if k != missing}
    assert refused(environ, server=True).variable == missing


@pytest.mark.parametrize("missing", ["GATEWAY_REDIS_URL", "GATEWAY_JWT_SECRET"])
def test_publisher_does_not_need_redis_url_or_token_key(missing: str) -> None:
    environ = {k: v for k, v in SERVER_ENV.items() if k != missing}
    assert Config.from_env(environ, server=False) is not None


def test_short_hs256_secret_is_refused() -> None:
    error = refused({**SERVER_ENV, "GATEWAY_JWT_SECRET": "s" * 31}, server=False)
    assert error.variable == "GATEWAY_JWT_SECRET"


def test_secret_length_counts_bytes_not_characters() -> None:
    assert load(GATEWAY_JWT_SECRET="é" * 16).jwt_secret == "é" * 16


@pytest.fixture
def public_pem(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "es256.pem"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_public_key_file_is_read(public_pem: Path) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": "redis://h", "GATEWAY_JWT_PUBLIC_KEY": str(public_pem)})
    assert config.jwt_public_key == public_pem.read_text()
    assert config.jwt_secret is None


def test_secret_and_public_key_together_are_refused(public_pem: Path) -> None:
    error = refused({**SERVER_ENV, "GATEWAY_JWT_PUBLIC_KEY": str(public_pem)})
    assert "GATEWAY_JWT_PUBLIC_KEY" in str(error)
    assert error.variable in ("GATEWAY_JWT_SECRET", "GATEWAY_JWT_PUBLIC_KEY")


def test_public_key_pointing_at_a_missing_file_is_refused(tmp_path: Path) -> None:
    error = refused({"GATEWAY_JWT_PUBLIC_KEY": str(tmp_path / "absent.pem")}, server=False)
    assert error.variable == "GATEWAY_JWT_PUBLIC_KEY"


@pytest.mark.parametrize(
    "content",
    [b"just text\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"\x30\x82\x01\xff\xfe"],
    ids=["text", "private-key", "binary"],
)
def test_public_key_pointing_at_a_non_pem_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    error = refused({"GATEWAY_JWT_PUBLIC_KEY": str(path)}, server=False)
    assert error.variable == "GATEWAY_JWT_PUBLIC_KEY"


def test_public_key_pointing_at_a_directory_is_refused(tmp_path: Path) -> None:
    assert refused({"GATEWAY_JWT_PUBLIC_KEY": str(tmp_path)}, server=False).variable == "GATEWAY_JWT_PUBLIC_KEY"


def test_describe_masks_the_secret() -> None:
    shown = load().describe()
    assert shown["GATEWAY_JWT_SECRET"] == "(set)"
    assert all(SECRET not in value for value in shown.values())


def test_describe_masks_the_public_key_contents(public_pem: Path) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": "redis://h", "GATEWAY_JWT_PUBLIC_KEY": str(public_pem)})
    assert config.describe()["GATEWAY_JWT_PUBLIC_KEY"] == "(set)"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:hunter2@redis.internal:6379/0", "redis://user:***@redis.internal:6379/0"),
        ("redis://:hunter2@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("rediss://default:p%40ss@r:6380", "rediss://default:***@r:6380"),
        ("redis://redis.internal:6379/0", "redis://redis.internal:6379/0"),
    ],
)
def test_describe_masks_the_redis_password(url: str, expected: str) -> None:
    assert load(GATEWAY_REDIS_URL=url).describe()["GATEWAY_REDIS_URL"] == expected


def test_describe_masks_a_redis_password_given_as_query_parameter() -> None:
    shown = load(GATEWAY_REDIS_URL="unix:///run/redis.sock?db=0&password=hunter2").describe()
    assert "hunter2" not in shown["GATEWAY_REDIS_URL"]


def test_describe_masks_every_password_argument_of_the_url() -> None:
    url = "redis+sentinel://10.0.0.1:26379/0/svc?sentinel_password=s3cret&ssl_password=k3y&db=0"
    shown = load(GATEWAY_REDIS_URL=url).describe()["GATEWAY_REDIS_URL"]
    assert "s3cret" not in shown and "k3y" not in shown
    assert "sentinel_password=***" in shown and "db=0" in shown


def test_describe_lists_every_variable_as_text() -> None:
    shown = load(GATEWAY_CORS_ORIGINS="https://a.example,https://b.example").describe()
    assert set(shown) == {spec.metadata["variable"] for spec in dataclasses.fields(Config)}
    assert shown["GATEWAY_CORS_ORIGINS"] == "https://a.example,https://b.example"
    assert shown["GATEWAY_JWT_AUDIENCE"] == ""


def test_config_is_frozen() -> None:
    config = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 3  # type: ignore[misc]


def test_secret_does_not_appear_in_repr() -> None:
    assert SECRET not in repr(load())


@pytest.mark.parametrize("url", ["https://idp.example.com/.well-known/jwks.json", "http://127.0.0.1:9000/jwks",
                                 "http://localhost/jwks", "http://[::1]:8080/jwks"])
def test_a_jwks_url_is_https_or_plain_http_to_this_machine(url: str) -> None:
    config = Config.from_env({"GATEWAY_REDIS_URL": "redis://h", "GATEWAY_JWT_JWKS_URL": url})
    assert config.jwt_jwks_url == url and config.jwt_jwks_refresh == 300


def test_a_jwks_url_with_another_key_is_refused_naming_it(public_pem: Path) -> None:
    url = "https://idp.example.com/jwks.json"
    error = refused({**SERVER_ENV, "GATEWAY_JWT_JWKS_URL": url})
    assert error.variable == "GATEWAY_JWT_JWKS_URL" and "GATEWAY_JWT_SECRET" in str(error)
    error = refused({"GATEWAY_REDIS_URL": "redis://h", "GATEWAY_JWT_PUBLIC_KEY": str(public_pem),
                     "GATEWAY_JWT_JWKS_URL": url})
    assert error.variable == "GATEWAY_JWT_JWKS_URL" and "GATEWAY_JWT_PUBLIC_KEY" in str(error)


def test_a_cluster_url_names_its_seed_nodes_and_lays_keys_out_in_partitions() -> None:
    url = "redis+cluster://gw:s3cret@10.0.0.21:7000,10.0.0.22:7000,[::1]:7001"
    config = Config.from_env({"GATEWAY_REDIS_URL": url, "GATEWAY_REDIS_PARTITIONS": "256"}, server=False)
    assert cluster_nodes(url) == [("10.0.0.21", 7000), ("10.0.0.22", 7000), ("::1", 7001)]
    assert config.cluster and config.partitions == 256
    assert "s3cret" not in config.describe()["GATEWAY_REDIS_URL"]
    single = Config.from_env({"GATEWAY_REDIS_URL": "redis://h:6379/0", "GATEWAY_REDIS_PARTITIONS": "256"},
                             server=False)
    assert not single.cluster and single.partitions == 1


def test_on_a_cluster_the_prefix_may_not_hold_braces_and_workers_are_not_served_yet() -> None:
    url = "redis+cluster://h1:7000"
    error = refused({"GATEWAY_REDIS_URL": url, "GATEWAY_KEY_PREFIX": "gw{1}"}, server=False)
    assert error.variable == "GATEWAY_KEY_PREFIX"
    error = refused({**SERVER_ENV, "GATEWAY_REDIS_URL": url})
    assert error.variable == "GATEWAY_REDIS_URL" and "single Redis or Sentinel" in str(error)
