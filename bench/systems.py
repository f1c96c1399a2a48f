"""The systems under test, started as in production, and what their processes cost.

- ``gateway``: ``gunicorn -c gunicorn.conf.py gateway.wsgi:app``, started and
  stopped by the integration tests' own :class:`GatewayProcess`;
- ``baseline``: ``gunicorn -c bench/gunicorn_baseline.conf.py
  'bench.baseline:create_app()'``, the same worker class and connection cap;
- ``node``: ``node bench/node/server.mjs``, a Socket.IO 4 server on
  ``@socket.io/redis-adapter``: a cluster primary and its workers, as gunicorn's
  master and its workers.

All three read the same ``GATEWAY_*`` environment (bind, Redis URL, JWT secret),
built by the tests' :func:`gateway_env`. Memory is read from
``/proc/<pid>/status`` (VmRSS) and CPU time from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.child import BenchError
from bench.nodejs import node_command
from harness.processes import REPO, GatewayProcess, gateway_env, wait_for

#: Seconds a server has to start, and to stop, before the run fails.
START_SECONDS = 30
STOP_SECONDS = 40
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: ESTABLISHED and CLOSE_WAIT in ``/proc/net/tcp``: sockets the server has not closed.
OPEN_STATES = frozenset({"01", "08"})
#: The systems, by the name ``--systems`` gives them.
NAMES = ("gateway", "baseline", "node")


@dataclass(frozen=True)
class SystemSpec:
    """One row of the results: a system and its worker count."""

    name: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.name} x{self.workers}"

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        """``gateway:2`` -> gateway with two workers."""
        name, _, workers = text.partition(":")
        if name not in NAMES or not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"{text!r}: expected gateway:N, baseline:N or node:N")
        return cls(name, int(workers))


class BaselineProcess(GatewayProcess):
    """The plain Flask-SocketIO baseline under gunicorn, managed like the gateway."""

    NAME = "baseline"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "bench/gunicorn_baseline.conf.py",
                "bench.baseline:create_app()"]

    def start(self, *, wait: bool = True) -> BaselineProcess:
        command = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for(self._ready, START_SECONDS, f"{self.NAME} /healthz and every worker listening")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
        return self._listening() and self.http("/healthz").status_code == 200

    def _listening(self) -> bool:
        """Whether every worker listens (for the baseline: /healthz answering is enough, as it always was)."""
        return True


class NodeProcess(BaselineProcess):
    """``node bench/node/server.mjs``: a cluster primary whose children are the workers, managed like gunicorn."""

    NAME = "node"
    #: What each worker logs once it listens.
    LISTENING = "worker listening on"

    def command(self) -> list[str]:
        return node_command("server.mjs")

    def _listening(self) -> bool:
        return self.log().count(self.LISTENING) >= self.config.workers


#: Connections one gunicorn worker accepts as configured (``worker_connections`` in gunicorn.conf.py and the
#: baseline's), and the places kept above the clients for health probes and the bench's own requests.
WORKER_CONNECTIONS = 20_000
CONNECTION_HEADROOM = 1_000


def new_server(
    spec: SystemSpec, redis_url: str, folder: Path, secret: str, log_path: Path, clients: int = 0
) -> GatewayProcess:
    """A server of ``spec``, not yet started, on a free loopback port with a key prefix of its own.

    A gunicorn server (the gateway, the baseline) accepts ``clients`` on one
    worker: when that is more than its configuration's worker connections,
    gunicorn is told more.
    """
    home = folder / f"home-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    more = {}
    if clients + CONNECTION_HEADROOM > WORKER_CONNECTIONS:
        more["GUNICORN_CMD_ARGS"] = f"--worker-connections {clients + CONNECTION_HEADROOM}"
    env = gateway_env(
        redis_url, f"bench{uuid.uuid4().hex[:8]}", home,
        GATEWAY_WORKERS=str(spec.workers), GATEWAY_JWT_SECRET=secret, GATEWAY_LOG_LEVEL="INFO", **more,
    )
    kinds: dict[str, type[GatewayProcess]] = {
        "gateway": GatewayProcess, "baseline": BaselineProcess, "node": NodeProcess,
    }
    return kinds[spec.name](env, log_path)


def allow_open_files(count: int) -> None:
    """Let this process, and the servers and clients it starts, open ``count`` files each.

    The soft limit is raised, and the hard one too where the process may
    (root); otherwise the run stops here, naming the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if count <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, max(count, hard)))
    except (ValueError, PermissionError) as exc:
        raise BenchError(
            f"{count} open files needed and the hard limit is {hard} ({exc}): raise it (ulimit -Hn) or ask for "
            "fewer --clients"
        ) from None


def check_installed(specs: tuple[SystemSpec, ...]) -> None:
    """Fail before anything starts when a system of ``specs`` is not installed (the node system's npm packages)."""
    if any(spec.name == "node" for spec in specs):
        node_command("server.mjs")


def stop_server(server: GatewayProcess) -> None:
    server.stop(seconds=STOP_SECONDS)


def open_sockets(port: int) -> int:
    """TCP connections on local ``port`` (IPv4) that the server has not closed yet.

    A client that closed leaves the server's end in CLOSE_WAIT until the
    server has handled the disconnect and closed it too (after which it may
    linger in TIME_WAIT, which is not counted).
    """
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] in OPEN_STATES and int(fields[1].rpartition(":")[2], 16) == port:
            count += 1
    return count


def rss_kb(pids: list[int]) -> int:
    """Resident memory of ``pids`` added up, in KiB (VmRSS)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def waiting_seconds(pid: int) -> float:
    """Time ``pid`` spent runnable but waiting for a CPU so far (``/proc/<pid>/schedstat``); 0 when gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except FileNotFoundError:
        return 0.0


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy so far, all cores (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class Usage:
    """Seconds of CPU each group ran, and seconds it was ready to run but waited for a CPU."""

    ran: dict[str, float]
    waited: dict[str, float]

    @staticmethod
    def percent(seconds: dict[str, float], window: float) -> dict[str, float]:
        """Seconds over a window of ``window`` seconds as % of one core."""
        return {name: round(100 * value / window, 1) for name, value in seconds.items()}


@dataclass(frozen=True)
class CpuMeter:
    """CPU use of named groups of processes over a window.

    ``other`` is what the rest of the machine used meanwhile: anything else
    running on it competes with the benchmark for the same cores. Waiting for
    a CPU while runnable means the machine, not the process, was the limit.
    """

    groups: dict[str, list[int]]

    def read(self) -> Usage:
        ran = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        ran["machine"] = machine_busy_seconds()
        waited = {name: sum(waiting_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        return Usage(ran, waited)

    @staticmethod
    def between(before: Usage, after: Usage) -> Usage:
        """What each group used between two readings; ``other`` for the rest of the machine."""
        ran = {name: after.ran[name] - before.ran[name] for name in before.ran}
        machine = ran.pop("machine")
        ran["other"] = max(0.0, machine - sum(ran.values()))
        waited = {name: after.waited[name] - before.waited[name] for name in before.waited}
        return Usage({k: round(v, 3) for k, v in ran.items()}, {k: round(v, 3) for k, v in waited.items()})
