"""Starting the gateway (the composition root, gateway.wsgi): bad configuration stops it at once, with one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.publisher import Publisher
from tests.integration.support import (
    REPO,
    GatewayProcess,
    RedisServer,
    gateway_env,
    unique_user,
)


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("GATEWAY_WORKERS", "many", "whole number"),
        ("GATEWAY_REDIS_URL", "http://127.0.0.1:6379", "scheme"),
        ("GATEWAY_JWT_SECRET", "short", "at least 32 bytes"),
        ("GATEWAY_TRANSPORTS", "websocket,polling", "polling needs GATEWAY_WORKERS=1"),
        ("GATEWAY_PING_INTERVAL", "-1", "between"),
        ("GATEWAY_TOPICS", "balance,Bad_Topic", "not a topic name"),
        ("GATEWAY_CORS_ORIGINS", "example.com", "not an http(s) origin"),
        ("GATEWAY_LOG_FORMAT", "xml", "text, json"),
    ],
)
def test_bad_configuration_stops_gunicorn_with_one_line(
    redis_server: RedisServer, tmp_path: Path, variable: str, value: str, words: str
) -> None:
    env = gateway_env(redis_server.url, "bad", tmp_path, **{variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway.wsgi:app"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gateway: {variable}: ") and words in lines[0]


def test_missing_token_key_names_the_variable(redis_server: RedisServer, tmp_path: Path) -> None:
    env = gateway_env(redis_server.url, "bad", tmp_path)
    del env["GATEWAY_JWT_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway.wsgi:app"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "gateway: GATEWAY_JWT_SECRET: is not set: set it, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL"
    )


def test_polling_is_served_with_one_worker(start_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = start_gateway(GATEWAY_WORKERS="1", GATEWAY_TRANSPORTS="websocket,polling")
    user = unique_user()
    client = gateway.client(user).connect(transports=["polling"])
    client.subscribe("pnl")
    with Publisher(config=gateway.config) as publisher:
        publisher.publish(user, "pnl", {"day": "3"})
    assert client.wait_events("pnl", 1)[0]["data"] == {"day": "3"}
    client.close()


def test_tls_in_gunicorn_is_refused_at_start_with_one_line_naming_the_setting(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = gateway_env(redis_server.url, "tls", tmp_path)
    env["GUNICORN_CMD_ARGS"] = f"--certfile={tmp_path / 'cert.pem'} --keyfile={tmp_path / 'key.pem'}"
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway.wsgi:app"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: certfile: TLS ends in front of gunicorn"), result.stderr
    assert "Booting worker" not in result.stderr, "no worker starts"
