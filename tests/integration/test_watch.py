"""``python -m gateway.watch`` against a real gateway: it shows a user's updates as they come, and a refusal."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

from gateway.publisher import Publisher
from tests.integration.support import REPO, GatewayProcess, unique_user


def watch(gateway: GatewayProcess, token: str, *topics: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.watch", gateway.url, token, *topics], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def line_with(lines: queue.Queue[str], text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {seconds} s")


def test_watch_shows_each_update_of_the_user_and_stops_on_ctrl_c(gateway: GatewayProcess) -> None:
    user = unique_user()
    process, lines = watch(gateway, gateway.token(user), "balance")
    try:
        assert "'balance': {'seq': 0}" in line_with(lines, "subscribed:", 20)
        with Publisher(config=gateway.config) as publisher:
            publisher.publish(user, "balance", {"usd": "12.50"})
        shown = line_with(lines, "balance {", 10)
        assert "'usd': '12.50'" in shown and f"'user_id': '{user}'" in shown
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_watch_with_a_bad_token_says_why_and_exits_1(gateway: GatewayProcess) -> None:
    process, lines = watch(gateway, "not-a-token")
    try:
        assert "'reason': 'invalid_token'" in line_with(lines, "refused:", 20)
        assert process.wait(20) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
