"""Where a worker's records end: its lease, and the sweeping of workers that died.

A connection's own records go with it (:class:`gateway.subscriptions.PendingReleases`
retries what Redis refused). A worker's records outlive it only as long as
its lease: :class:`Heartbeat`
renews this worker's lease and removes the records of workers silent for
three beats; :func:`sweep` does the same on demand (``gateway sweep``), and
:func:`sweep_process` is what gunicorn's master runs when a worker exits,
SIGKILL included.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway import metrics
from gateway.logs import FaultOnce
from gateway.subscriptions import PendingReleases, Registry

log = logging.getLogger(__name__)


class Heartbeat:
    """This worker's lease, renewed every beat, and the sweep of dead workers.

    Each beat renews the lease for three beats; when Redis reports the lease
    as new (it lost this worker's records), ``reassert`` records every live
    connection again. Then releases that failed are retried, and the records
    of every worker whose lease ended are removed. ``fresh`` tells ``/readyz`` whether the last beat succeeded
    within three beats.
    """

    def __init__(
        self,
        registry: Registry,
        interval: float,
        reassert: Callable[[], int],
        releases: PendingReleases,
        tidy: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.reassert = reassert
        self.releases = releases
        self.tidy = tidy
        self.last_beat = float("-inf")
        self._wake = threading.Event()
        self._fault = FaultOnce(log, "worker heartbeat failed")

    @property
    def lease(self) -> float:
        return 3 * self.interval

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self.last_beat < self.lease

    def wake(self) -> None:
        """Beat now rather than at the next interval (after Redis came back)."""
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self.beat()
            self._wake.wait(self.interval)
            self._wake.clear()

    def beat(self) -> None:
        self.tidy()
        try:
            if self.registry.beat(self.lease):
                count = self.reassert()
                if count:
                    log.warning("lease was lost; records of %d connections re-asserted", count)
            self.last_beat = time.monotonic()
            self.releases.retry()
            swept = sweep_expired(self.registry)
        except RedisError:
            self._fault.fault(worker=self.registry.worker_id)
            return
        self._fault.clear()
        if swept:
            log.info("swept the records of %d connections of dead workers", swept)


def sweep_expired(registry: Registry) -> int:
    """Remove the records of every worker whose lease ended; return connections removed."""
    removed = 0
    for worker in registry.expired():
        removed += registry.drop_worker(worker)
        metrics.SWEEPS.inc()
    return removed


def new_worker_id() -> str:
    """A worker id for this process, ``host:pid:nonce``: unique across hosts, processes and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class WorkerName:
    """The host and process of a worker id (:func:`new_worker_id`)."""

    host: str
    pid: int

    @classmethod
    def parse(cls, worker_id: str) -> WorkerName | None:
        parts = worker_id.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]))

    def process_gone(self) -> bool:
        """True when this worker ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def sweep(registry: Registry) -> dict[str, int]:
    """``gateway sweep``: remove the records of every dead worker now.

    Dead: its lease ended, or it ran on this host and its process is gone, or
    it holds records without any lease. A live worker wrongly swept (a stall
    longer than three beats) re-asserts its records at its next beat.
    """
    leases = registry.workers()
    dead = set(registry.expired())
    for worker in registry.owners() | set(leases):
        name = WorkerName.parse(worker)
        if worker not in leases or (name is not None and name.process_gone()):
            dead.add(worker)
    return {worker: registry.drop_worker(worker) for worker in sorted(dead)}


def sweep_process(registry: Registry, pid: int, host: str | None = None) -> int:
    """Remove the records of the worker process ``pid`` of this host (gunicorn's ``child_exit``)."""
    target = WorkerName(host or socket.gethostname(), pid)
    removed = 0
    for worker in registry.owners() | set(registry.workers()):
        if WorkerName.parse(worker) == target:
            removed += registry.drop_worker(worker)
    return removed
