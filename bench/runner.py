"""The scenarios, run against each system under test in turn.

For every system: (1) connections, on a fresh server; then (2) latency,
(3) latency again beside a hostile neighbour and (4) the rate search, on
another fresh server with ``users`` clients. Every process started here
(redis-server, gunicorn or node, publishers, load generators, the hostile client) is
stopped by its PID on the way out, on success, error or Ctrl-C.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.child import BenchError
from bench.hostile import Flooded, HostileClient
from bench.loadgen import LoadGen
from bench.publish import NICENESS, START_DELAY, TOPIC, PublisherPool, Sent
from bench.stats import Tally, tally
from bench.systems import (
    CpuMeter,
    SystemSpec,
    Usage,
    allow_open_files,
    check_installed,
    new_server,
    open_sockets,
    rss_kb,
    stop_server,
)
from harness.processes import GatewayProcess, RedisServer, unclean_lines

log = logging.getLogger(__name__)

#: A step is sustained when at least this share of its updates arrived...
DELIVERED_MIN = 0.99
#: ... and 99 % of them within this many milliseconds.
P99_MAX_MS = 500.0
#: Publishers below this share of the asked rate, and gaining less than
#: PUBLISHER_GAIN over the best step so far, are the bottleneck, not the system.
PUBLISHER_MIN = 0.9
PUBLISHER_GAIN = 1.1
#: CPU (% of one core) used by processes outside the benchmark above which a window is flagged.
BUSY_MACHINE = 25.0
#: Seconds the server may take to handle every disconnect once all clients closed.
DROP_SECONDS = 180.0
#: Open files each process may have beyond one per client (logs, pipes, Redis, the bench's own).
OPEN_FILES_HEADROOM = 500
#: Clients per second the connections scenario waits for at the least, beyond ``Plan.connect_seconds``.
CONNECTS_PER_SECOND = 100
#: Seconds the hostile client floods at most beyond its window, should nobody end it.
FLOOD_MARGIN = 60.0
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    """Every number of a run; ``quick()`` scales it down."""

    systems: tuple[SystemSpec, ...] = (
        SystemSpec("gateway", 1), SystemSpec("gateway", 2), SystemSpec("baseline", 1), SystemSpec("baseline", 2),
        SystemSpec("node", 1), SystemSpec("node", 2),
    )
    clients: int = 10_000
    users: int = 1_000
    latency_rate: int = 1_000
    latency_seconds: float = 10.0
    rates: tuple[int, ...] = (
        2_000, 4_000, 7_000, 10_000, 12_500, 15_000, 17_500, 20_000, 22_500, 25_000, 30_000, 34_000,
    )
    step_seconds: float = 4.0
    confirm: bool = True
    recovery_seconds: float = 2.0
    publishers: int = 8
    publisher_rate: int = 8_000
    publisher_threads: int = 1
    publisher_nice: int = NICENESS
    loadgen_processes: int = 1
    connect_seconds: float = 180.0
    quiet_seconds: float = 2.0
    drain_seconds: float = 30.0
    hostile: bool = True
    log_level: str = "INFO"

    def quick(self) -> Plan:
        return replace(
            self, clients=1_000, users=200, latency_seconds=3.0, rates=(2_000, 4_000, 8_000, 16_000, 32_000),
            step_seconds=2.0, recovery_seconds=1.0, drain_seconds=15.0,
        )


@dataclass(frozen=True)
class Connections:
    target: int
    reached: int
    seconds: float
    rss_before_kb: int
    rss_after_kb: int
    kb_per_connection: float | None
    drop_seconds: float | None
    errors: dict[str, int]


@dataclass(frozen=True)
class Step:
    """One measured window: what was delivered, and what each process group spent."""

    tally: Tally
    cpu_percent: dict[str, float]
    cpu_seconds: dict[str, float]
    waited_percent: dict[str, float]
    publisher_processes: int
    clients_connected: int

    @property
    def worker_us_per_update(self) -> float | None:
        """CPU the server's workers spent per update delivered, in microseconds."""
        if not self.tally.delivered:
            return None
        workers = sum(value for name, value in self.cpu_seconds.items() if name.startswith("worker"))
        return round(1e6 * workers / self.tally.delivered, 1)

    @property
    def sustained(self) -> bool:
        t = self.tally
        return t.published > 0 and t.delivered_share >= DELIVERED_MIN and t.p99_ms < P99_MAX_MS

    def describe(self) -> str:
        t = self.tally
        cpu = ", ".join(f"{name} {share:g}%" for name, share in self.cpu_percent.items())
        waited = ", ".join(f"{name} {share:g}%" for name, share in self.waited_percent.items() if name != "publishers")
        return (
            f"{t.rate:g}/s asked, {t.publish_rate:g}/s published by {self.publisher_processes}: "
            f"{100 * t.delivered_share:.2f} % delivered ({t.delivered_per_s:g}/s), p50 {t.p50_ms:g} ms, "
            f"p99 {t.p99_ms:g} ms, p99.9 {t.p999_ms:g} ms, "
            f"lost {t.lost}, duplicated {t.duplicated}, clients up {self.clients_connected}; "
            f"workers' CPU {self.worker_us_per_update} us/update; CPU % of a core: {cpu}; "
            f"waited for a CPU: {waited}"
        )


@dataclass(frozen=True)
class RateSearch:
    max_sustained: int | None
    publisher_bound: bool
    steps: list[Step]
    overload: Step | None = None
    recovery: Step | None = None

    @property
    def recovered(self) -> bool | None:
        if self.recovery is None:
            return None
        return self.recovery.tally.published > 0 and self.recovery.tally.lost == 0


@dataclass(frozen=True)
class Neighbour:
    """The latency window measured again while a hostile client floods the same server."""

    step: Step
    flood: Flooded
    #: Honest clients connected once the flood had ended, and how many there are.
    connected_after: int
    clients: int


@dataclass(frozen=True)
class SystemResult:
    system: str
    workers: int
    connections: Connections
    latency: Step
    rate: RateSearch
    hostile: Neighbour | None = None
    stop_seconds: dict[str, float] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Site:
    """Where a run's servers live: a temporary ``folder``, their JWT ``secret``, the folder ``logs`` stay in."""

    folder: Path
    secret: str
    logs: Path


def run(plan: Plan, logs: Path = RESULTS) -> list[SystemResult]:
    """Every system of ``plan``, one after the other, against one private Redis; server logs go to ``logs``."""
    check_installed(plan.systems)
    allow_open_files(max(plan.clients, plan.users) + OPEN_FILES_HEADROOM)
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        site = Site(Path(tmp), secrets.token_hex(32), logs)
        redis = RedisServer(site.folder)
        try:
            redis.start()
            return [bench_system(spec, redis, plan, site) for spec in plan.systems]
        finally:
            redis.stop()


def bench_system(spec: SystemSpec, redis: RedisServer, plan: Plan, site: Site) -> SystemResult:
    started = time.monotonic()
    log.info("%s: connections, %d clients", spec.label, plan.clients)
    stops: dict[str, float] = {}
    connections = measure_connections(spec, redis, plan, site, stops)
    users = [f"u{i}" for i in range(plan.users)]
    with serving(spec, redis, site, "delivery", stops, plan.users) as server, ExitStack() as stack:
        loadgen = stack.enter_context(
            LoadGen(server.url, site.secret, TOPIC, users, plan.loadgen_processes, plan.log_level)
        )
        pool = stack.enter_context(
            PublisherPool(
                spec.name, redis.url, server.env, plan.publishers, plan.publisher_rate, plan.publisher_threads,
                plan.log_level, plan.publisher_nice,
            )
        )
        _connect_all(loadgen, len(users), plan.connect_seconds, spec)
        windows = Windows(loadgen, pool, users, _meter(server, redis, pool, loadgen), plan)
        log.info("%s: latency, %d users, %d updates/s for %g s", spec.label, plan.users, plan.latency_rate,
                 plan.latency_seconds)
        latency = windows.measure(plan.latency_rate, plan.latency_seconds)
        hostile = measure_hostile(windows, server, site, spec) if plan.hostile else None
        rate = find_max_rate(windows, plan, spec)
    problems = unclean_lines(server.log())
    if problems:
        log.warning("%s: %d log lines with errors or warnings, first: %s", spec.label, len(problems), problems[0])
    return SystemResult(spec.name, spec.workers, connections, latency, rate, hostile, stops, problems[:20],
                        round(time.monotonic() - started, 1))


@contextmanager
def serving(
    spec: SystemSpec, redis: RedisServer, site: Site, name: str, stops: dict[str, float], clients: int
) -> Iterator[GatewayProcess]:
    """A started server of ``spec``, stopped on the way out; its log kept in ``site.logs``.

    ``stops[name]`` gets the seconds from SIGTERM to the server's exit.
    """
    log_path = site.logs / f"{spec.name}-{spec.workers}-{name}.log"
    log_path.unlink(missing_ok=True)
    server = new_server(spec, redis.url, site.folder, site.secret, log_path, clients)
    try:
        server.start()
        log.info("%s: serving on %s, workers %s", spec.label, server.url, server.worker_pids())
        yield server
    finally:
        started = time.monotonic()
        stop_server(server)
        stops[name] = round(time.monotonic() - started, 1)
        log.info("%s: stopped in %.1f s after SIGTERM", spec.label, stops[name])


def measure_connections(
    spec: SystemSpec, redis: RedisServer, plan: Plan, site: Site, stops: dict[str, float]
) -> Connections:
    """Connect ``plan.clients`` clients, each subscribed to one topic; then drop them all at once.

    Memory per connection: the workers' RSS after minus before, over the
    clients connected. Drop: seconds from closing every client until the
    server has handled every disconnect and closed its end of each socket.
    """
    users = [f"c{i}" for i in range(plan.clients)]
    with serving(spec, redis, site, "connections", stops, plan.clients) as server:
        with LoadGen(server.url, site.secret, TOPIC, users, plan.loadgen_processes, plan.log_level) as loadgen:
            before = rss_kb(server.worker_pids())
            status = loadgen.connect(max(plan.connect_seconds, plan.clients / CONNECTS_PER_SECOND))
            after = rss_kb(server.worker_pids())
            closing = time.monotonic()
        port = int(server.config.bind.rpartition(":")[2])
        dropped = until(lambda: open_sockets(port) == 0, DROP_SECONDS)
        drop_seconds = round(time.monotonic() - closing, 1) if dropped else None
    reached = int(status["connected"])
    per = round((after - before) / reached, 2) if reached else None
    log.info("%s: %d of %d clients connected in %.1f s; workers' RSS %d -> %d KiB, %s KiB per connection; "
             "all disconnects handled %s s after the clients closed", spec.label, reached, plan.clients,
             status["seconds"], before, after, per, drop_seconds if dropped else f"not within {DROP_SECONDS}")
    return Connections(
        plan.clients, reached, round(status["seconds"], 1), before, after, per, drop_seconds, status["errors"]
    )


def measure_hostile(windows: Windows, server: GatewayProcess, site: Site, spec: SystemSpec) -> Neighbour:
    """The latency window again, while one more client floods the server with messages of the largest size.

    The size is ``GATEWAY_MAX_MESSAGE_BYTES`` of the server's own
    configuration (the baseline reads the same environment). The flood starts
    before the window and ends with its publishing; the drain then counts
    what the flood delayed beyond it. A server may still be reading the flood
    then and deliver nothing for seconds, so the drain waits for every update
    (``plan.drain_seconds`` at most) rather than stopping at a silence. Then
    the honest clients dropped meanwhile, if any, get the time to reconnect
    before the next scenario.
    """
    plan = windows.plan
    size = server.config.max_message_bytes
    log.info("%s: hostile neighbour, %d updates/s for %g s while one client sends messages of %d bytes",
             spec.label, plan.latency_rate, plan.latency_seconds, size)
    with HostileClient(server.url, site.secret, size, plan.log_level) as hostile:
        flooded = windows.with_group("hostile", [hostile.pid])
        hostile.begin(START_DELAY + plan.latency_seconds + FLOOD_MARGIN)
        published = flooded.publish(plan.latency_rate, plan.latency_seconds)
        flood = hostile.end()
    step = flooded.settle(published, quiet=plan.drain_seconds)
    log.info("%s: hostile client: %s", spec.label, flood.describe())
    status = windows.await_connected()
    if status["connected"] < status["clients"]:
        log.warning("%s: after the flood only %d of %d clients are connected", spec.label, status["connected"],
                    status["clients"])
    return Neighbour(step, flood, int(status["connected"]), int(status["clients"]))


def until(condition: Callable[[], bool], seconds: float, interval: float = 0.1) -> bool:
    """Wait until ``condition()`` holds, ``seconds`` at most; whether it does."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _connect_all(loadgen: LoadGen, count: int, seconds: float, spec: SystemSpec) -> None:
    status = loadgen.connect(seconds)
    if status["connected"] < count:
        raise BenchError(f"{spec.label}: only {status['connected']} of {count} clients connected: {status['errors']}")
    log.info("%s: %d clients connected in %.1f s", spec.label, count, status["seconds"])


def _meter(server: GatewayProcess, redis: RedisServer, pool: PublisherPool, loadgen: LoadGen) -> CpuMeter:
    assert redis.process is not None
    workers = server.worker_pids()
    groups: dict[str, list[int]] = {f"worker{i + 1}": [pid] for i, pid in enumerate(workers)}
    groups.update(redis=[redis.process.pid], publishers=pool.pids, loadgen=loadgen.pids)
    return CpuMeter(groups)


@dataclass(frozen=True)
class Published:
    """A window's publishing done: what was sent, and the CPU each group used meanwhile (s, and % of a core)."""

    sent: Sent
    usage: Usage
    cpu: dict[str, float]
    waited: dict[str, float]


class Windows:
    """Measures windows: publish at a rate, drain, tally, and the CPU it took."""

    def __init__(self, loadgen: LoadGen, pool: PublisherPool, users: list[str], meter: CpuMeter, plan: Plan) -> None:
        self.loadgen = loadgen
        self.pool = pool
        self.users = users
        self.meter = meter
        self.plan = plan

    def measure(self, rate: float, seconds: float) -> Step:
        return self.settle(self.publish(rate, seconds))

    def publish(self, rate: float, seconds: float) -> Published:
        """The first half of a window: forget what was received, publish, read the CPU used meanwhile."""
        self.loadgen.reset()
        before, started = self.meter.read(), time.monotonic()
        sent = self.pool.run(self.users, rate, seconds)
        usage = CpuMeter.between(before, self.meter.read())
        window = time.monotonic() - started
        cpu, waited = Usage.percent(usage.ran, window), Usage.percent(usage.waited, window)
        if cpu["other"] > BUSY_MACHINE:
            log.warning("other processes used %g %% of a core meanwhile: these figures are pessimistic",
                        cpu["other"])
        if sent.errors or sent.gaps:
            log.warning("publishers: %d errors, %d seqs published by someone else", sent.errors, sent.gaps)
        return Published(sent, usage, cpu, waited)

    def settle(self, published: Published, quiet: float | None = None) -> Step:
        """The second half: drain what was published, and tally it.

        The drain ends early after ``quiet`` seconds without an arrival
        (``plan.quiet_seconds`` unless given).
        """
        sent = published.sent
        quiet = self.plan.quiet_seconds if quiet is None else quiet
        received = self.loadgen.drain(sent.ranges, quiet, self.plan.drain_seconds)
        step = Step(tally(sent, received), published.cpu, published.usage.ran, published.waited, sent.processes,
                    int(received.status["connected"]))
        log.info("%s", step.describe())
        return step

    def await_connected(self) -> dict[str, Any]:
        return self.loadgen.await_connected(self.plan.drain_seconds)

    def with_group(self, name: str, pids: list[int]) -> Windows:
        """The same windows, with one more group of processes in the CPU reading."""
        meter = CpuMeter({**self.meter.groups, name: pids})
        return Windows(self.loadgen, self.pool, self.users, meter, self.plan)


def find_max_rate(windows: Windows, plan: Plan, spec: SystemSpec) -> RateSearch:
    """Step the rate up until a step is not sustained; then check that delivery recovers.

    A step that is not sustained is measured once more (``plan.confirm``),
    so that a burst of other work on the machine does not end the search. The
    result is the publish rate reached in the best sustained step. When
    the publishers fall short of the asked rate (below :data:`PUBLISHER_MIN`)
    and no longer gain on the step before while the system keeps up, the
    search stops there: the publishers, not the system, are the limit.
    """
    steps: list[Step] = []
    best: int | None = None
    for rate in plan.rates:
        log.info("%s: rate step %d updates/s for %g s", spec.label, rate, plan.step_seconds)
        step = windows.measure(rate, plan.step_seconds)
        steps.append(step)
        if not step.sustained and plan.confirm:
            log.info("%s: %d/s not sustained; measuring it once more before calling it the limit", spec.label, rate)
            step = windows.measure(rate, plan.step_seconds)
            steps.append(step)
        if not step.sustained:
            log.info("%s: overloaded at %g/s; checking recovery", spec.label, step.tally.publish_rate)
            return RateSearch(best, False, steps, step, check_recovery(windows, plan, spec))
        reached = round(step.tally.publish_rate)
        if reached < PUBLISHER_MIN * rate and best is not None and reached < PUBLISHER_GAIN * best:
            log.warning("%s: publishers reached only %d of %d/s, no more than before; the search stops here",
                        spec.label, reached, rate)
            return RateSearch(max(best, reached), True, steps)
        best = max(best or 0, reached)
    return RateSearch(best, False, steps)


def check_recovery(windows: Windows, plan: Plan, spec: SystemSpec) -> Step:
    """After an overload: every client up again, then one update per user, all of which must arrive."""
    status = windows.await_connected()
    log.info("%s: after the overload %d of %d clients are connected", spec.label, status["connected"],
             status["clients"])
    step = windows.measure(plan.users / plan.recovery_seconds, plan.recovery_seconds)
    return step
