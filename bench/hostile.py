"""The hostile neighbour: one signed-in client that floods the server with messages of the largest size allowed.

It speaks the load generator's wire protocol (Engine.IO v4 over ``websockets``):

1. open ``ws://HOST/socket.io/?EIO=4&transport=websocket`` and read ``0{...}``;
2. send ``40{"token": JWT}`` (a valid token) and read ``40{"sid": ...}``;
3. send text frames of exactly ``size`` bytes, ``42["subscribe","xxx..."]``,
   one after the other as fast as the socket takes them, answering every
   ping ``2`` with ``3`` meanwhile.

A server that cuts it off (a close frame, an Engine.IO close ``1`` or Socket.IO
disconnect ``41``, a reset) has it reconnect at once and flood again, until
the flood is ended: then its connection is dropped at once, with what was
still in flight. It counts the messages and bytes it handed to the socket,
the sessions it got, how often it was cut off and how. A handshake that fails
is retried after :data:`FAILED_PAUSE`, so that a server refusing it is not
measured against a loop of connection attempts instead of a flood.

:class:`HostileClient` is the orchestrator's handle: the flood runs in a
spawned process (:func:`main`) at the bench's own niceness, so that it
competes for the CPU like any other program on the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bench.child import AsyncHandler, BenchError, Child, configure_child, serve_async
from bench.loadgen import CLOSE_SECONDS, HANDSHAKE_SECONDS, ProtocolError, mint, socketio_url

log = logging.getLogger(__name__)

#: The hostile client's user.
USER = "hostile"
#: Seconds between a failed handshake and the next attempt.
FAILED_PAUSE = 0.1
#: Seconds the parent waits beyond a command's own bound for its answer.
ANSWER_SECONDS = 30.0
#: The event every flooding message names; its argument is the padding.
PREFIX, SUFFIX = '42["subscribe","', '"]'


def flood_message(size: int) -> bytes:
    """A Socket.IO event of exactly ``size`` bytes: ``42["subscribe","xxx..."]``."""
    padding = size - len(PREFIX) - len(SUFFIX)
    if padding < 0:
        raise ValueError(f"{size} bytes cannot hold a Socket.IO event")
    return (PREFIX + "x" * padding + SUFFIX).encode()


def how_closed(exc: ConnectionClosed) -> str:
    """``close 1009`` when the server sent a close frame, else what ended the TCP connection."""
    if exc.rcvd is not None:
        return f"close {exc.rcvd.code}"
    cause = exc.__cause__
    return f"no close frame ({type(cause).__name__})" if cause is not None else "no close frame"


class Flood:
    """One flooding client, reconnected whenever the server cuts it off; what it got to send."""

    def __init__(self, http_url: str, secret: str, size: int) -> None:
        self.url = socketio_url(http_url)
        self.token = mint(secret, USER)
        self.message = flood_message(size)
        self.stopping = asyncio.Event()
        #: Set by the first session, or by the first handshake that failed.
        self.tried = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None
        self.started = self.ended = 0.0
        self.messages = self.sessions = self.cuts = self.failed = 0
        self.reasons: Counter[str] = Counter()

    # Commands from the orchestrator.
    async def begin(self, limit: float) -> dict[str, Any]:
        """Start flooding, for ``limit`` seconds at most; return once the first session is up, or failed."""
        self.started = time.monotonic()
        self.task = asyncio.create_task(self._run(limit))
        try:
            await asyncio.wait_for(self.tried.wait(), HANDSHAKE_SECONDS + 1)
        except TimeoutError:
            log.warning("hostile client: no answer to its first connection within %g s", HANDSHAKE_SECONDS)
        return self.status()

    async def end(self) -> dict[str, Any]:
        """Stop flooding at once (the connection is dropped, what is in flight with it); return what was sent."""
        self.stopping.set()
        self.ended = self.ended or time.monotonic()
        if self.ws is not None:
            self.ws.transport.abort()
        if self.task is not None:
            _done, pending = await asyncio.wait([self.task], timeout=2 * CLOSE_SECONDS + 5)
            for task in pending:
                task.cancel()
        return self.status()

    def status(self) -> dict[str, Any]:
        seconds = (self.ended or time.monotonic()) - self.started if self.started else 0.0
        return {
            "size": len(self.message), "seconds": round(seconds, 3), "messages": self.messages,
            "bytes": self.messages * len(self.message), "sessions": self.sessions, "cuts": self.cuts,
            "failed": self.failed, "reasons": dict(self.reasons.most_common(8)),
        }

    # The flood itself.
    async def _run(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._reconnecting(), seconds)
        except TimeoutError:
            log.warning("hostile client: flood not ended within %g s; stopping it", seconds)
            self.stopping.set()

    async def _reconnecting(self) -> None:
        while not self.stopping.is_set():
            try:
                ws = await asyncio.wait_for(self._open(), HANDSHAKE_SECONDS)
            except (OSError, WebSocketException, TimeoutError, ProtocolError, ValueError) as exc:
                self._failed(exc)
                await self._pause(FAILED_PAUSE)
                continue
            self.ws = ws
            try:
                cut = await self._session(ws)
            finally:
                self.ws = None
                ws.transport.abort()  # a no-op once closed; else (cancelled) the connection goes at once
            if cut is not None and not self.stopping.is_set():
                self.cuts += 1
                self.reasons[cut] += 1
                log.debug("hostile client: cut off: %s", cut)

    async def _open(self) -> ClientConnection:
        ws = await connect(
            self.url, compression=None, ping_interval=None, proxy=None, user_agent_header=None,
            open_timeout=HANDSHAKE_SECONDS, close_timeout=CLOSE_SECONDS, max_size=2**20,
        )
        try:
            opened = await ws.recv()
            if not isinstance(opened, str) or not opened.startswith("0"):
                raise ProtocolError(f"expected an Engine.IO open packet, got {opened[:60]!r}")
            await ws.send("40" + json.dumps({"token": self.token}))
            reply = await ws.recv()
            if not isinstance(reply, str) or not reply.startswith("40"):
                raise ProtocolError(f"connection refused: {reply[:200]!r}")
        except BaseException:
            ws.transport.abort()
            raise
        return ws

    async def _session(self, ws: ClientConnection) -> str | None:
        """Send until the server ends the session or the flood ends; how the server ended it, if it did."""
        self.sessions += 1
        self.tried.set()
        reader = asyncio.create_task(self._read(ws))
        try:
            ended = await self._send_all(ws, reader)
            if self.stopping.is_set():
                return None
            await ws.close()  # at once when the server closed it; else after CLOSE_SECONDS at most
            await asyncio.wait([reader], timeout=CLOSE_SECONDS)
            return reader.result() if reader.done() else ended  # the reader's account is the closer one
        finally:
            reader.cancel()

    async def _send_all(self, ws: ClientConnection, reader: asyncio.Task[str]) -> str | None:
        """Send as fast as the socket takes it, while the session lasts; how it ended, if it did."""
        try:
            while not self.stopping.is_set() and not reader.done():
                await ws.send(self.message, text=True)
                self.messages += 1
                await asyncio.sleep(0)  # let the reader answer pings when the socket never pushes back
        except ConnectionClosed as exc:
            return how_closed(exc)
        return None

    async def _read(self, ws: ClientConnection) -> str:
        """Answer pings until the server ends the session; how it did."""
        try:
            while True:
                message = await ws.recv()
                if message == "2":
                    await ws.send("3")
                elif message in ("1", "41"):
                    return {"1": "engine.io close", "41": "socket.io disconnect"}[message]
        except ConnectionClosed as exc:
            return how_closed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.tried.set()
        if not self.stopping.is_set():
            self.failed += 1
            self.reasons[f"handshake {type(exc).__name__}: {str(exc)[:80]}"] += 1

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return


def main(conn: Connection, http_url: str, secret: str, size: int, log_level: str) -> None:
    """The hostile client's process, steered over ``conn``."""
    configure_child(log_level)
    asyncio.run(_serve(conn, http_url, secret, size))


async def _serve(conn: Connection, http_url: str, secret: str, size: int) -> None:
    flood = Flood(http_url, secret, size)
    handlers: dict[str, AsyncHandler] = {"begin": flood.begin, "end": flood.end}
    try:
        await serve_async(conn, handlers)
    finally:
        await flood.end()


@dataclass(frozen=True)
class Flooded:
    """What the hostile client did in one window."""

    size: int
    seconds: float
    messages: int
    bytes: int
    sessions: int
    cuts: int
    failed: int
    reasons: dict[str, int]

    @property
    def mib_per_s(self) -> float:
        return round(self.bytes / 2**20 / self.seconds, 1) if self.seconds > 0 else 0.0

    def describe(self) -> str:
        how = ", ".join(f"{reason} x{count}" for reason, count in self.reasons.items()) or "never cut"
        return (
            f"{self.messages} messages of {self.size} bytes ({self.bytes / 2**20:.1f} MiB, {self.mib_per_s:g} MiB/s) "
            f"in {self.seconds:g} s over {self.sessions} sessions; cut {self.cuts} times, "
            f"{self.failed} handshakes failed: {how}"
        )


class HostileClient:
    """The orchestrator's handle on the hostile client's process."""

    def __init__(self, http_url: str, secret: str, size: int, log_level: str) -> None:
        self.child = Child("hostile", main, http_url, secret, size, log_level)

    def __enter__(self) -> HostileClient:
        self.child.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.child.stop()

    @property
    def pid(self) -> int:
        return self.child.pid

    def begin(self, limit: float) -> dict[str, Any]:
        """Start flooding for ``limit`` seconds at most (:meth:`end` normally comes first)."""
        status: dict[str, Any] = self.child.call("begin", HANDSHAKE_SECONDS + ANSWER_SECONDS, limit=limit)
        if not status["sessions"]:
            raise BenchError(f"the hostile client could not connect: {status['reasons']}")
        return status

    def end(self) -> Flooded:
        return Flooded(**self.child.call("end", 2 * CLOSE_SECONDS + 5 + ANSWER_SECONDS))
