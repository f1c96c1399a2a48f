"""Child processes steered over a pipe: one command at a time, each answered in time.

The parent sends ``(command, arguments)``; the child answers ``(True, result)``
or ``(False, "what failed")``. Children ignore SIGINT, so that Ctrl-C reaches
the parent alone, which then stops every child by its PID; a child whose
parent vanished sees its pipe close and exits.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a child has to leave after ``stop`` before it is terminated.
STOP_SECONDS = 10.0
SPAWN = multiprocessing.get_context("spawn")

Handler = Callable[..., Any]
AsyncHandler = Callable[..., Awaitable[Any]]


class BenchError(Exception):
    """A part of the benchmark failed: a child, a server, a measurement."""


class Child:
    """A spawned process running ``target(connection, *args)``."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self._conn, child_end = SPAWN.Pipe()
        self._process = SPAWN.Process(target=target, args=(child_end, *args), name=name, daemon=True)
        self._child_end = child_end
        #: Commands sent and not answered: more than none after an interrupted call.
        self.pending = 0

    @property
    def pid(self) -> int:
        pid = self._process.pid
        if pid is None:
            raise BenchError(f"{self.name} is not started")
        return pid

    def start(self) -> Child:
        self._process.start()
        self._child_end.close()
        return self

    @property
    def in_step(self) -> bool:
        """Whether every command sent so far was answered (none was interrupted)."""
        return self.pending == 0

    def send(self, command: str, **arguments: Any) -> None:
        self._conn.send((command, arguments))
        self.pending += 1

    def receive(self, command: str, seconds: float) -> Any:
        try:
            if not self._conn.poll(seconds):
                raise BenchError(f"{self.name}: no answer to {command!r} within {seconds:g} s")
            ok, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise BenchError(f"{self.name} (pid {self.pid}) is gone: exit code {self._process.exitcode}") from exc
        self.pending -= 1
        if not ok:
            raise BenchError(f"{self.name}: {command!r} failed: {value}")
        return value

    def call(self, command: str, seconds: float, **arguments: Any) -> Any:
        self.send(command, **arguments)
        return self.receive(command, seconds)

    def stop(self) -> None:
        """Ask the child to leave; terminate it by its PID if it does not, or if it is mid-command."""
        if self._process.pid is None or not self._process.is_alive():
            return
        if self.in_step:
            try:
                self.send("stop")
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                log.debug("%s: pipe already closed: %s", self.name, exc)
            self._process.join(STOP_SECONDS)
        if self._process.is_alive():
            log.info("%s (pid %d) is busy; terminating it", self.name, self.pid)
            self._process.terminate()
            self._process.join(STOP_SECONDS)
        self._conn.close()


def call_all(
    children: Iterable[Child], command: str, seconds: float, arguments: Iterable[Mapping[str, Any]]
) -> list[Any]:
    """Send ``command`` to every child at once, then collect every answer."""
    pairs = list(zip(children, arguments, strict=True))
    for child, args in pairs:
        child.send(command, **args)
    return [child.receive(command, seconds) for child, _ in pairs]


def configure_child(log_level: str) -> None:
    """What every child does first: leave SIGINT to the parent, log like it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(processName)s %(levelname)s %(message)s")


def serve(conn: Connection, handlers: Mapping[str, Handler]) -> None:
    """Answer commands until ``stop`` or until the parent is gone."""
    while True:
        try:
            command, arguments = conn.recv()
        except EOFError:
            return
        if command == "stop":
            return
        conn.send(_answer(command, handlers[command], arguments))


async def serve_async(conn: Connection, handlers: Mapping[str, AsyncHandler]) -> None:
    """:func:`serve` for a child whose work runs on an asyncio loop."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            command, arguments = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            return
        if command == "stop":
            return
        try:
            result = (True, await handlers[command](**arguments))
        except Exception as exc:
            log.exception("%s failed", command)
            result = (False, f"{type(exc).__name__}: {exc}")
        conn.send(result)


def _answer(command: str, handler: Handler, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
    try:
        return True, handler(**arguments)
    except Exception as exc:
        log.exception("%s failed", command)
        return False, f"{type(exc).__name__}: {exc}"


def start_all(children: Sequence[Child]) -> None:
    """Start every child; if one fails to start, stop those already started, then raise."""
    try:
        for child in children:
            child.start()
    except BaseException:
        for child in children:
            child.stop()
        raise
