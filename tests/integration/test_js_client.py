"""Interoperability: the official JavaScript ``socket.io-client`` 4.x against a real gateway.

Each test runs ``tests/js/client.mjs`` under Node and reads its JSON lines as
they come; the script's own hard timer and every read here have a deadline.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.publisher import Publisher
from tests.integration.support import REPO, GatewayProcess, unclean_lines, unique_user, wait_for

JS = REPO / "tests" / "js"
if shutil.which("node") is None or not (JS / "node_modules").is_dir():
    pytest.skip(
        "node or tests/js/node_modules is missing (make test installs them: cd tests/js && npm ci)",
        allow_module_level=True,
    )

#: Longer than client.mjs's own 20 s hard limit, so a hang shows as its exit 2.
PROCESS_SECONDS = 30
LINE_SECONDS = 25


class JsClient:
    """``node client.mjs URL TOKEN EXPECTED_COUNT TOPIC...``, its stdout read line by line."""

    def __init__(self, url: str, token: str | None, expected: int, topics: list[str], stderr: Path) -> None:
        self.stderr_path = stderr
        with open(stderr, "wb") as err:
            self.process = subprocess.Popen(
                ["node", "client.mjs", url, token or "", str(expected), *topics],
                cwd=JS, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self._lines.put(text)
        self._lines.put(None)

    def next(self, seconds: float = LINE_SECONDS) -> dict[str, Any]:
        """The next JSON line; fail if none comes within ``seconds`` or stdout ends."""
        try:
            text = self._lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no line from client.mjs in {seconds} s; stderr: {self.stderr()}") from None
        assert text is not None, f"client.mjs ended (status {self.process.wait(5)}); stderr: {self.stderr()}"
        return dict(json.loads(text))

    def rest(self) -> tuple[int, list[dict[str, Any]]]:
        """Wait for the exit; return its status and every line not yet read."""
        status = self.process.wait(PROCESS_SECONDS)
        self._reader.join(5)
        lines = []
        while (text := self._lines.get(timeout=5)) is not None:
            lines.append(json.loads(text))
        return status, lines

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def publisher(gateway: GatewayProcess) -> Iterator[Publisher]:
    with Publisher(config=gateway.config) as pub:
        yield pub


@pytest.fixture
def run_js(tmp_path: Path) -> Iterator[Any]:
    """Start ``client.mjs`` runs for one test; any still running after it is killed."""
    started: list[JsClient] = []

    def run(url: str, token: str | None, expected: int, *topics: str) -> JsClient:
        client = JsClient(url, token, expected, list(topics), tmp_path / f"node{len(started)}.stderr")
        started.append(client)
        return client

    yield run
    for client in started:
        client.kill()


def test_js_client_subscribes_and_gets_exactly_its_own_updates_in_order(
    gateway: GatewayProcess, publisher: Publisher, run_js: Any
) -> None:
    user, other = unique_user(), unique_user()
    per_topic = 20
    client = run_js(gateway.url, gateway.token(user), 2 * per_topic, "balance", "pnl")
    assert client.next() == {
        "event": "ack",
        "data": {"ok": True, "topics": {"balance": {"seq": 0}, "pnl": {"seq": 0}}, "rejected": {}},
    }
    assert publisher.user_topics(user) == {"balance", "pnl"}
    for n in range(1, per_topic + 1):
        assert publisher.publish(other, "balance", {"n": n, "user": other}) == n
        assert publisher.publish(user, "orders", {"n": n, "user": user}) == n
        assert publisher.publish(user, "balance", {"n": n, "user": user}) == n
        assert publisher.publish(user, "pnl", {"n": n, "user": user}) == n
    status, lines = client.rest()
    assert status == 0, f"client.mjs exited {status} after {len(lines)} lines, last {lines[-2:]}; {client.stderr()}"
    assert {line["event"] for line in lines} == {"update"}, lines
    assert len(lines) == 2 * per_topic
    for topic in ("balance", "pnl"):
        updates = [line["data"] for line in lines if line["topic"] == topic]
        assert [u["seq"] for u in updates] == list(range(1, per_topic + 1)), (topic, updates)
        assert [u["data"] for u in updates] == [{"n": n, "user": user} for n in range(1, per_topic + 1)]
        assert all(u["topic"] == topic and u["user_id"] == user and isinstance(u["ts"], float) for u in updates)
    wait_for(lambda: publisher.user_topics(user) == set(), 2, "the JS client's records removed after it left")
    assert unclean_lines(gateway.log()) == []


@pytest.mark.parametrize(
    ("token", "reason"),
    [("not-a-jwt", "invalid_token"), (None, "missing_token"), ("expired", "expired_token")],
    ids=["bad_token", "missing_token", "expired_token"],
)
def test_js_client_is_refused_with_the_contract_reason(
    gateway: GatewayProcess, run_js: Any, token: str | None, reason: str
) -> None:
    if token == "expired":
        token = gateway.token(unique_user(), ttl=-10)
    client = run_js(gateway.url, token, 1, "balance")
    status, lines = client.rest()
    assert status == 0, f"client.mjs exited {status}; lines: {lines}; stderr: {client.stderr()}"
    assert lines == [{"event": "connect_error", "message": "unauthorized", "data": {"reason": reason}}]


def test_js_resuming_example_sees_every_seq_once_across_a_reload(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """examples/js/resuming-client.mjs, as shipped, across a SIGHUP reload under publishing."""
    gateway = start_gateway(GATEWAY_HISTORY_SIZE="2000")
    (tmp_path / "node_modules").symlink_to(JS / "node_modules")
    shutil.copy(REPO / "examples" / "js" / "resuming-client.mjs", tmp_path)
    user = unique_user()
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        node = subprocess.Popen(
            ["node", "resuming-client.mjs", gateway.url, gateway.token(user), "60", "balance"],
            cwd=tmp_path, stdout=out, stderr=err,
        )

    def lines() -> list[dict[str, Any]]:
        return [json.loads(text) for text in (tmp_path / "stdout").read_text().splitlines()]

    stop = threading.Event()
    last = {"seq": 0}

    def publish(publisher: Publisher) -> None:
        while not stop.wait(0.005) and last["seq"] < 5000:  # pacing, not synchronisation
            last["seq"] = publisher.publish(user, "balance", {"n": last["seq"] + 1})

    try:
        wait_for(lambda: any("ack" in line for line in lines()), 20, "the example subscribed")
        with Publisher(config=gateway.config) as publisher:
            pusher = threading.Thread(target=publish, args=(publisher,))
            pusher.start()
            try:
                wait_for(lambda: len(lines()) > 50, 30, "updates flowing")
                assert gateway.process is not None
                old = set(gateway.worker_pids())
                gateway.process.send_signal(signal.SIGHUP)
                wait_for(lambda: not old & set(gateway.worker_pids()), 30, "workers replaced")
                wait_for(lambda: sum("ack" in line for line in lines()) >= 2, 30, "the example resubscribed")
                mark = last["seq"]
                wait_for(lambda: lines()[-1].get("seq", 0) > mark + 20, 30, "updates after the reload")
            finally:
                stop.set()
                pusher.join(30)
        wait_for(lambda: lines()[-1].get("seq") == last["seq"], 15, "every update delivered")
    finally:
        node.kill()
        node.wait(10)
    updates = [line for line in lines() if "seq" in line]
    assert [line["seq"] for line in updates] == list(range(1, last["seq"] + 1))
    acks = [line["ack"] for line in lines() if "ack" in line]
    assert all(ack["ok"] for ack in acks) and "snapshot" not in acks[1]["topics"]["balance"]


def test_js_resuming_example_refreshes_its_token_from_a_file_and_keeps_its_session(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """examples/js/resuming-client.mjs with @TOKEN_FILE: a short token, then a long one written to the file."""
    gateway = start_gateway(GATEWAY_TOKEN_REFRESH_LEAD="2", GATEWAY_JWT_LEEWAY="1")
    (tmp_path / "node_modules").symlink_to(JS / "node_modules")
    shutil.copy(REPO / "examples" / "js" / "resuming-client.mjs", tmp_path)
    user = unique_user()
    token_file = tmp_path / "token"
    token_file.write_text(gateway.token(user, ttl=4))  # warned 2 s before its exp
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        node = subprocess.Popen(
            ["node", "resuming-client.mjs", gateway.url, f"@{token_file}", "60", "balance"],
            cwd=tmp_path, stdout=out, stderr=err,
        )

    def lines() -> list[dict[str, Any]]:
        return [json.loads(text) for text in (tmp_path / "stdout").read_text().splitlines()]

    try:
        wait_for(lambda: any("ack" in line for line in lines()), 20, "the example subscribed")
        token_file.write_text(gateway.token(user, ttl=3600))  # the sidecar renews the file
        wait_for(lambda: any("refresh" in line for line in lines()), 15, "the example refreshed")
        with Publisher(config=gateway.config) as publisher:
            deadline = time.time() + 4  # past the first token's exp and leeway: the clock is this test's subject
            seq = 0
            while time.time() < deadline:
                seq = publisher.publish(user, "balance", {"n": seq + 1})
                time.sleep(0.05)  # pacing, not synchronisation
        wait_for(lambda: lines()[-1].get("seq") == seq, 15, "every update delivered")
    finally:
        node.kill()
        node.wait(10)
    refreshes = [line["refresh"] for line in lines() if "refresh" in line]
    assert refreshes and all(ack["ok"] for ack in refreshes) and refreshes[-1]["exp"] > time.time() + 3000
    assert [line["seq"] for line in lines() if "seq" in line] == list(range(1, seq + 1))
    assert sum("ack" in line for line in lines()) == 1, "one session all along"
    assert unclean_lines(gateway.log()) == []
