"""The Node.js side of the ``node`` system: where it is installed, and its emitter process.

``bench/node/`` holds a Socket.IO 4 server on ``@socket.io/redis-adapter``
(``server.mjs``, started by :class:`bench.systems.NodeProcess`) and a publisher on
``@socket.io/redis-emitter`` (``emitter.mjs``, driven by :class:`Emitter`), with
their dependencies pinned in ``package-lock.json`` and installed by ``npm ci``
(``make bench`` does it when ``node_modules`` is missing or older than the lock).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from bench.child import BenchError

log = logging.getLogger(__name__)

NODE_DIR = Path(__file__).resolve().parent / "node"
#: What ``npm ci`` leaves behind; its absence means the dependencies are not installed.
INSTALLED = NODE_DIR / "node_modules" / ".package-lock.json"
#: Seconds the emitter has to leave once its stdin is closed, before it is killed.
STOP_SECONDS = 5.0


def node_command(script: str) -> list[str]:
    """``node bench/node/<script>``; :class:`BenchError` when Node or the dependencies are missing."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("the node system needs Node.js 20: apt-get install nodejs npm")
    if not INSTALLED.exists():
        raise BenchError(f"the node system's dependencies are not installed: make bench, or cd {NODE_DIR} && npm ci")
    return [node, str(NODE_DIR / script)]


class EmitterError(Exception):
    """The emitter process could not publish a batch, or is gone."""


class Emitter:
    """A ``node bench/node/emitter.mjs`` child: one batch of emits a line, answered once Redis took it.

    Batches are sent one at a time (a lock), each answered before the next is
    written; the child stamps each update's ``ts`` as it emits it. The child
    exits when its stdin closes: on :meth:`close`, or when this process ends.
    """

    def __init__(self, redis_url: str, env: Mapping[str, str], topic: str, data: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [*node_command("emitter.mjs"), topic, json.dumps(data, separators=(",", ":"))],
            env={**env, "GATEWAY_REDIS_URL": redis_url}, cwd=NODE_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        self.lock = threading.Lock()
        try:
            ready = self._answer()  # the child gives up after 10 s without Redis
        except EmitterError:
            self.close()
            raise
        if not ready.get("ready"):
            self.close()
            raise EmitterError(f"emitter (pid {self.pid}) did not start: {ready}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def emit(self, batch: Sequence[tuple[str, int]]) -> None:
        """Emit one update to each ``(user, seq)``; return once Redis has taken them all."""
        with self.lock:
            try:
                self._stdin.write(json.dumps(batch) + "\n")
                self._stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise EmitterError(f"emitter (pid {self.pid}) is gone: exit code {self.process.poll()}") from exc
            answer = self._answer()
        if "error" in answer:
            raise EmitterError(answer["error"])

    def close(self) -> None:
        """Close the child's stdin, so that it leaves; kill it by its PID if it does not in time."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except (BrokenPipeError, OSError) as exc:
                log.debug("emitter (pid %d): stdin already closed: %s", self.pid, exc)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.info("emitter (pid %d) did not leave; killing it", self.pid)
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def _stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def _answer(self) -> dict[str, Any]:
        """The child's next line: an answer, or an :class:`EmitterError` when the child is gone."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise EmitterError(f"emitter (pid {self.pid}) is gone: exit code {self.process.poll()}")
        answer: dict[str, Any] = json.loads(line)
        return answer
