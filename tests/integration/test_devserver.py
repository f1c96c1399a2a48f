"""``make run``'s server: a private Redis, gunicorn and the demo, from nothing, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.support import REPO, Client, free_port, unclean_lines, wait_for


def ctrl_c(run: subprocess.Popen[bytes]) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
    os.killpg(run.pid, signal.SIGINT)


def sigterm(run: subprocess.Popen[bytes]) -> None:
    run.send_signal(signal.SIGTERM)


def sigterm_again_and_again(run: subprocess.Popen[bytes]) -> None:
    """An impatient operator: each signal may land while the server waits on the lock a handler would take."""
    for _ in range(5):
        run.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("stop", [sigterm, ctrl_c, sigterm_again_and_again])
def test_make_run_serves_demo_updates_and_stops_cleanly(
    tmp_path: Path, stop: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env.update(HOME=str(tmp_path), GATEWAY_BIND=f"127.0.0.1:{free_port()}")
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "gateway.devserver"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as in a terminal
        )
    try:
        banner = wait_for(lambda: re.search(r"token for user 1: (\S+)", log_path.read_text()), 60, "gateway ready")
        client = Client(f"http://{env['GATEWAY_BIND']}", banner.group(1), user="1").connect()
        ack = client.call("subscribe", {"topics": ["balance", "positions", "pnl", "orders"]})
        assert ack["ok"] and set(ack["topics"]) == {"balance", "positions", "pnl", "orders"}
        updates = client.wait_events("orders", 3, seconds=15)
        assert [u["user_id"] for u in updates] == ["1", "1", "1"]
        assert updates[-1]["seq"] > updates[0]["seq"]
        client.close()
        stop(run)
        assert run.wait(40) == 0
    finally:
        run.kill()
        run.wait(10)
    text = log_path.read_text()
    assert unclean_lines(text) == []
    assert "Traceback" not in text
    assert "Shutting down: Master" in text
    master = int(re.search(r"Listening at: \S+ \((\d+)\)", text).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(master, 0)
