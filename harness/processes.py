"""Real parts for the integration tests and the benchmark: redis-server, gunicorn, Socket.IO clients.

Every wait is a condition with a deadline; every process started here is
stopped by the PID it was given.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import mint_token
from gateway.client import OrderedClient
from gateway.config import Config

REPO = Path(__file__).resolve().parents[1]
SECRET = "integration-secret-0123456789abcdef-0123456789"
#: Lines a clean gateway log never has at INFO and above.
UNCLEAN = re.compile(
    r"Traceback|write\(\) before start_response|Broken pipe|BrokenPipe|ConnectionReset|"
    r"\bERROR\b|\bWARNING\b|\bCRITICAL\b|Exception"
)


def wait_for(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.02) -> Any:
    """Return ``condition()``'s first truthy value; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {seconds:g} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_user() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def connection_keys(client: redis.Redis, prefix: str) -> set[str]:
    """Keys under ``prefix`` that belong to connections and workers.

    Left out: what is kept per user whatever the connections (seq counters,
    history, revocations), the data epoch and the publish counts.
    """
    kept = (b":seq:", b":hist:", b":revoked:")
    return {
        key.decode() for key in client.scan_iter(f"{prefix}:*")
        if not any(part in key for part in kept) and not key.endswith((b":epoch", b":published", b":layout"))
    }


def unclean_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if UNCLEAN.search(line)]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RedisServer:
    """A private redis-server on a loopback port and a Unix socket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.socket_path = folder / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self, *, keep_data: bool = False) -> None:
        persistence = ["--save", "", "--appendonly", "no"]
        if keep_data:
            persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--unixsocket", str(self.socket_path),
             "--unixsocketperm", "700", "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"),
             *persistence],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        wait_for(lambda: self._answers(client), 10, "redis-server")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(10)

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False


class GatewayProcess:
    """A real ``gunicorn -c gunicorn.conf.py gateway.wsgi:app`` under test."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.config = Config.from_env(env)
        self.url = f"http://{self.config.bind}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> GatewayProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway.wsgi:app"],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait:
            wait_for(self._ready, 30, "gateway /readyz and every worker started")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
        started = self.log().count("worker started")
        return started >= self.config.workers and self.http("/readyz").status_code == 200

    def http(self, path: str) -> requests.Response:
        try:
            return requests.get(self.url + path, timeout=5)
        except requests.ConnectionError:
            response = requests.Response()
            response.status_code = 599
            return response

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def token(self, user: str | int, ttl: int = 3600) -> str:
        return mint_token(self.config, user, ttl)

    def client(self, user: str, **kwargs: Any) -> Client:
        return Client(self.url, self.token(user), user=user, **kwargs)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop(self, sig: int = signal.SIGTERM, seconds: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"gunicorn did not stop within {seconds} s") from None


def samples(gateway: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics: (name, sorted labels) -> value."""
    text = gateway.http("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics, 0 when it is not there yet."""
    return samples(gateway).get((name, tuple(sorted(labels.items()))), 0.0)


def gateway_env(redis_url: str, prefix: str, home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env.update(
        HOME=str(home),
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_BIND=f"127.0.0.1:{free_port()}",
        GATEWAY_WORKERS="2",
        GATEWAY_JWT_SECRET=SECRET,
        GATEWAY_KEY_PREFIX=prefix,
        GATEWAY_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


class Client:
    """A python-socketio client that records every event it receives, in arrival order."""

    def __init__(self, url: str, token: str | None, *, user: str = "", **kwargs: Any) -> None:
        self.url, self.token, self.user = url, token, user
        kwargs.setdefault("reconnection", False)
        self.sio = OrderedClient(**kwargs)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.refused: list[Any] = []
        self._changed = threading.Condition()
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._refused)

    def _record(self, event: str, data: Any = None) -> None:
        with self._changed:
            self.events[event].append(data)
            self._changed.notify_all()

    def _refused(self, data: Any = None) -> None:
        with self._changed:
            self.refused.append(data)
            self._changed.notify_all()

    def connect(self, **kwargs: Any) -> Client:
        auth = {"token": self.token} if self.token is not None else None
        options: dict[str, Any] = {"auth": auth, "transports": ["websocket"], "wait_timeout": 10}
        options.update(kwargs)
        self.sio.connect(self.url, **options)
        return self

    def call(self, event: str, payload: Any = None) -> Any:
        return self.sio.call(event, payload, timeout=10)

    def subscribe(self, *topics: str) -> dict[str, Any]:
        ack = self.call("subscribe", {"topics": list(topics)})
        assert ack["ok"], ack
        return dict(ack)

    def wait_events(self, event: str, count: int, seconds: float = 15) -> list[Any]:
        with self._changed:
            reached = self._changed.wait_for(lambda: len(self.events[event]) >= count, seconds)
            events = list(self.events[event])
        assert reached, f"{event}: {len(events)} of {count} received in {seconds} s"
        return events

    def seqs(self, topic: str) -> list[int]:
        with self._changed:
            return [update["seq"] for update in self.events[topic]]

    def close(self) -> None:
        self.sio.disconnect()
