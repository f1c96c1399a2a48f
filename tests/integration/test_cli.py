"""The ``gateway`` command against a real Redis: check-config, token, subs, and a bad variable."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.auth import TokenVerifier
from gateway.config import Config
from gateway.subscriptions import Registry
from tests.integration.support import REPO, SECRET, RedisServer


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_gateway_command_for_operators(redis_server: RedisServer, prefix: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_REDIS_URL": redis_server.url.replace("127.0.0.1", ":hunter2@127.0.0.1"),
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_KEY_PREFIX": prefix,
    }
    shown = cli("check-config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "GATEWAY_JWT_SECRET=(set)" in shown.stdout and SECRET not in shown.stdout
    assert "hunter2" not in shown.stdout and "GATEWAY_KEY_PREFIX=" + prefix in shown.stdout
    env["GATEWAY_REDIS_URL"] = redis_server.url
    token = cli("token", "42", "--ttl", "60", env=env).stdout.strip()
    too_long = cli("token", "42", "--ttl", "86401", env=env)
    assert too_long.returncode == 2 and "--ttl" in too_long.stderr and "86400" in too_long.stderr
    assert TokenVerifier(Config.from_env(env)).verify(token) == "42"
    Registry(redis_server.client(), prefix, "w").subscribe("s", "42", ["pnl", "orders"])
    assert cli("subs", "--user", "42", env=env).stdout.split() == ["orders", "pnl"]
    assert cli("subs", "--topic", "pnl", env=env).stdout.strip() == "pnl (1): 42"
    assert cli("subs", "--topic", "nope", env=env).returncode == 2
    bad = cli("check-config", env={**env, "GATEWAY_PING_TIMEOUT": "soon"})
    assert bad.returncode == 1
    assert bad.stderr.strip() == "gateway: GATEWAY_PING_TIMEOUT: must be a number of seconds, got 'soon'"
