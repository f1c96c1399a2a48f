"""The load generator: Socket.IO v5 clients on asyncio, thousands per process.

Each client is one user on one WebSocket, speaking the wire protocol itself
(Engine.IO v4 over ``websockets``, no Socket.IO client library), the same way
against every system under test:

1. open ``ws://HOST/socket.io/?EIO=4&transport=websocket`` and read ``0{...}``;
2. send ``40{"token": JWT}`` and read ``40{"sid": ...}`` (``44`` is a refusal);
3. send ``421["subscribe", {"topics": [TOPIC]}]`` and read the ack ``431[{"ok": true, ...}]``;
4. answer every ping ``2`` with ``3``, and record every event ``42[TOPIC, update]``.

Each update is recorded as (user, seq, ts, receive time, snapshot): latency is
receive time minus the ``ts`` the publisher stamped (one machine, one clock),
and (user, seq) tells lost and duplicated updates apart. A client that loses
its connection reconnects after a jittered delay, like socket.io-client, for a
bounded number of attempts.

:class:`LoadGen` is the orchestrator's handle: it runs the clients in one or
more spawned processes (:func:`main`) and merges what they report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bench.child import AsyncHandler, BenchError, Child, call_all, configure_child, serve_async, start_all

log = logging.getLogger(__name__)

#: Seconds one connection attempt (TCP, WebSocket, auth, subscribe) may take.
HANDSHAKE_SECONDS = 15.0
#: Jittered delay before a reconnect, as socket.io-client's default (1 s, +-50 %).
RETRY_SECONDS = (0.5, 1.5)
#: Connection attempts one client makes over its life, first one included.
MAX_ATTEMPTS = 30
#: Handshakes in flight at once per process: a steady ramp, not a SYN flood.
CONCURRENCY = 200
#: Lifetime of the minted tokens: longer than any run.
TOKEN_SECONDS = 6 * 3600
#: Seconds between two looks at the received count while draining.
POLL_SECONDS = 0.05
#: Seconds a closing client waits for the server's close frame.
CLOSE_SECONDS = 2.0
#: Connections one load-generator process opens at most: each has a loopback source address of its own, and
#: one address has about 28,000 ephemeral ports towards one server port.
CLIENTS_PER_SOURCE = 25_000


class ProtocolError(Exception):
    """The server refused the client or answered off-protocol."""


def socketio_url(http_url: str) -> str:
    """``http://127.0.0.1:8000`` -> the Engine.IO v4 WebSocket endpoint."""
    netloc = urlsplit(http_url).netloc
    return f"ws://{netloc}/socket.io/?EIO=4&transport=websocket"


def mint(secret: str, user: str) -> str:
    """An HS256 token for ``user`` (``sub``, ``exp``), as a login service would sign it."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + TOKEN_SECONDS}, secret, algorithm="HS256")


@dataclass
class Records:
    """Received updates, one column per field (compact enough for 10^6 rows)."""

    user: array[int] = field(default_factory=lambda: array("l"))
    seq: array[int] = field(default_factory=lambda: array("q"))
    ts: array[float] = field(default_factory=lambda: array("d"))
    received: array[float] = field(default_factory=lambda: array("d"))
    snapshot: array[int] = field(default_factory=lambda: array("b"))

    def __len__(self) -> int:
        return len(self.seq)

    def add(self, user: int, seq: int, ts: float, received: float, snapshot: bool) -> None:
        self.user.append(user)
        self.seq.append(seq)
        self.ts.append(ts)
        self.received.append(received)
        self.snapshot.append(1 if snapshot else 0)

    def extend(self, other: Records, user_offset: int) -> None:
        self.user.extend(u + user_offset for u in other.user)
        self.seq.extend(other.seq)
        self.ts.extend(other.ts)
        self.received.extend(other.received)
        self.snapshot.extend(other.snapshot)


class Recorder:
    """Turns each event packet into a row of :class:`Records`."""

    def __init__(self, users: Sequence[str]) -> None:
        self.index = {user: i for i, user in enumerate(users)}
        self.records = Records()
        self.malformed = 0
        self.last_arrival = 0.0

    def reset(self) -> None:
        self.records = Records()

    def event(self, packet: str) -> None:
        now = time.time()
        try:
            _name, update = json.loads(packet[2:])
            row = (self.index[update["user_id"]], int(update["seq"]), float(update["ts"]))
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return
        self.records.add(*row, now, bool(update.get("snapshot")))
        self.last_arrival = now


class Client:
    """One user's connection, reconnected when it drops."""

    def __init__(self, fleet: Fleet, user: str, token: str) -> None:
        self.fleet = fleet
        self.user = user
        self.token = token
        self.ws: ClientConnection | None = None

    async def run(self) -> None:
        fleet = self.fleet
        for _attempt in range(MAX_ATTEMPTS):
            if fleet.stopping.is_set():
                return
            try:
                async with fleet.gate:
                    self.ws = await asyncio.wait_for(self._open(), HANDSHAKE_SECONDS)
            except (OSError, WebSocketException, TimeoutError, ProtocolError, ValueError) as exc:
                fleet.failed(exc)
            else:
                await self._session(self.ws)
            if fleet.stopping.is_set():
                return
            await fleet.pause(random.uniform(*RETRY_SECONDS))
        fleet.give_up()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _session(self, ws: ClientConnection) -> None:
        self.fleet.up()
        try:
            async for message in ws:
                if not await self._handle(ws, message):
                    break
        except (OSError, WebSocketException) as exc:
            log.debug("%s: connection lost: %s", self.user, exc)
        finally:
            self.ws = None
            self.fleet.down()
            await ws.close()

    async def _open(self) -> ClientConnection:
        ws = await connect(
            self.fleet.url, compression=None, ping_interval=None, proxy=None, user_agent_header=None,
            open_timeout=HANDSHAKE_SECONDS, close_timeout=CLOSE_SECONDS, max_size=2**20,
            local_addr=(self.fleet.source, 0),
        )
        try:
            await self._handshake(ws)
        except BaseException:
            ws.transport.abort()
            raise
        return ws

    async def _handshake(self, ws: ClientConnection) -> None:
        opened = await ws.recv()
        if not isinstance(opened, str) or not opened.startswith("0"):
            raise ProtocolError(f"expected an Engine.IO open packet, got {opened[:60]!r}")
        await ws.send("40" + json.dumps({"token": self.token}))
        if (reply := await self._until(ws, ("40", "44"))).startswith("44"):
            raise ProtocolError(f"connection refused: {reply[2:200]}")
        await ws.send("421" + json.dumps(["subscribe", {"topics": [self.fleet.topic]}]))
        ack = json.loads((await self._until(ws, ("431",)))[3:])
        if not (isinstance(ack, list) and ack and isinstance(ack[0], dict) and ack[0].get("ok")):
            raise ProtocolError(f"subscribe refused: {str(ack)[:200]}")

    async def _until(self, ws: ClientConnection, prefixes: tuple[str, ...]) -> str:
        """The next packet starting with one of ``prefixes``; others are handled on the way."""
        while True:
            message = await ws.recv()
            if not isinstance(message, str):
                raise ProtocolError("binary frame during the handshake")
            if message.startswith(prefixes):
                return message
            if not await self._handle(ws, message):
                raise ProtocolError(f"closed by the server during the handshake: {message[:60]!r}")

    async def _handle(self, ws: ClientConnection, message: str | bytes) -> bool:
        """Handle one packet; False when the server ends the session."""
        if not isinstance(message, str):
            return True
        if message.startswith("42"):
            self.fleet.recorder.event(message)
        elif message == "2":
            await ws.send("3")
        elif message in ("1", "41"):
            return False
        return True


class Fleet:
    """Every client of one load-generator process, and what they received."""

    def __init__(self, http_url: str, secret: str, topic: str, users: Sequence[str], source: str) -> None:
        self.url = socketio_url(http_url)
        #: the loopback address this process's connections come from
        self.source = source
        self.secret = secret
        self.topic = topic
        self.users = list(users)
        self.recorder = Recorder(self.users)
        self.gate = asyncio.Semaphore(CONCURRENCY)
        self.stopping = asyncio.Event()
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.connected = self.sessions = self.given_up = 0
        self.errors: Counter[str] = Counter()
        self._changed = asyncio.Event()

    # What clients report.
    def up(self) -> None:
        self.connected += 1
        self.sessions += 1
        self._changed.set()

    def down(self) -> None:
        self.connected -= 1
        self._changed.set()

    def failed(self, exc: BaseException) -> None:
        self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1

    def give_up(self) -> None:
        self.given_up += 1
        self._changed.set()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before a reconnect, or less if the fleet stops."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return

    # Commands from the orchestrator.
    async def connect(self, seconds: float) -> dict[str, Any]:
        """Start every client; return once all are up (or given up), or after ``seconds``."""
        started = time.monotonic()
        self.clients = [Client(self, user, mint(self.secret, user)) for user in self.users]
        self.tasks = [asyncio.create_task(client.run()) for client in self.clients]
        await self._until(lambda: self.connected + self.given_up >= len(self.users), seconds)
        return self.status() | {"seconds": time.monotonic() - started}

    async def await_connected(self, seconds: float) -> dict[str, Any]:
        """Wait until every client that has not given up is connected again."""
        await self._until(lambda: self.connected + self.given_up >= len(self.users), seconds)
        return self.status()

    async def reset(self) -> dict[str, Any]:
        """Start a new measurement window: forget what was received so far."""
        self.recorder.reset()
        return self.status()

    async def drain(self, ranges: dict[str, tuple[int, int]], quiet: float, seconds: float) -> dict[str, Any]:
        """Wait for every seq in ``ranges`` (user -> first, last), then hand the window over.

        Ends early when nothing arrived for ``quiet`` seconds, and after
        ``seconds`` at the latest: what has not arrived by then counts as lost.
        """
        wanted = {self.recorder.index[user]: span for user, span in ranges.items()}
        expected = sum(last - first + 1 for first, last in wanted.values())
        started = time.time()
        deadline = started + seconds
        seen: set[tuple[int, int]] = set()
        scanned = 0
        while True:
            records = self.recorder.records
            for i in range(scanned, len(records)):
                span = wanted.get(records.user[i])
                if span is not None and span[0] <= records.seq[i] <= span[1]:
                    seen.add((records.user[i], records.seq[i]))
            scanned = len(records)
            now = time.time()
            if len(seen) >= expected or now > deadline or now - max(self.recorder.last_arrival, started) > quiet:
                break
            await asyncio.sleep(POLL_SECONDS)
        return {"users": self.users, "records": self.recorder.records, "status": self.status()}

    async def close(self) -> dict[str, Any]:
        """Close every connection politely; cancel what does not finish in time."""
        self.stopping.set()
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)
        if self.tasks:
            _done, pending = await asyncio.wait(self.tasks, timeout=2 * CLOSE_SECONDS + 5)
            for task in pending:
                task.cancel()
        return self.status()

    async def status_command(self) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "clients": len(self.users), "connected": self.connected, "sessions": self.sessions,
            "given_up": self.given_up, "malformed": self.recorder.malformed,
            "errors": dict(self.errors.most_common(5)),
        }

    async def _until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return done()
        return True


def raise_file_limit() -> None:
    """Allow as many sockets as the hard limit does: one per client."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(
    conn: Connection, http_url: str, secret: str, topic: str, users: list[str], log_level: str, source: str
) -> None:
    """A load-generator process: its clients, from loopback address ``source``, steered over ``conn``."""
    configure_child(log_level)
    raise_file_limit()
    asyncio.run(_serve(conn, http_url, secret, topic, users, source))


async def _serve(conn: Connection, http_url: str, secret: str, topic: str, users: list[str], source: str) -> None:
    fleet = Fleet(http_url, secret, topic, users, source)
    handlers: dict[str, AsyncHandler] = {
        "connect": fleet.connect, "await_connected": fleet.await_connected, "reset": fleet.reset,
        "drain": fleet.drain, "status": fleet.status_command, "close": fleet.close,
    }
    try:
        await serve_async(conn, handlers)
    finally:
        await fleet.close()


@dataclass(frozen=True)
class Received:
    """One measurement window, merged over the load-generator processes."""

    users: list[str]
    records: Records
    status: dict[str, Any]


class LoadGen:
    """The orchestrator's handle on the load generator: one or more processes as one."""

    def __init__(
        self, http_url: str, secret: str, topic: str, users: Sequence[str], processes: int, log_level: str
    ) -> None:
        processes = max(processes, -(-len(users) // CLIENTS_PER_SOURCE))
        shards = [list(users[i::processes]) for i in range(processes)]
        self.children = [
            Child(f"loadgen-{i}", main, http_url, secret, topic, shard, log_level, f"127.0.0.{i + 1}")
            for i, shard in enumerate(shards) if shard
        ]
        self.shard_users = [set(shard) for shard in shards if shard]

    def __enter__(self) -> LoadGen:
        start_all(self.children)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        started = time.monotonic()
        try:
            if all(child.in_step for child in self.children):
                call_all(self.children, "close", 4 * CLOSE_SECONDS + 30, [{}] * len(self.children))
        except (BenchError, OSError) as error:
            log.warning("load generator: closing the clients failed: %s", error)
        finally:
            for child in self.children:
                child.stop()
        log.info("load generator: clients closed in %.1f s", time.monotonic() - started)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def connect(self, seconds: float) -> dict[str, Any]:
        return _summed(call_all(self.children, "connect", seconds + 30, [{"seconds": seconds}] * len(self.children)))

    def await_connected(self, seconds: float) -> dict[str, Any]:
        arguments = [{"seconds": seconds}] * len(self.children)
        return _summed(call_all(self.children, "await_connected", seconds + 30, arguments))

    def reset(self) -> None:
        call_all(self.children, "reset", 30, [{}] * len(self.children))

    def drain(self, ranges: dict[str, tuple[int, int]], quiet: float, seconds: float) -> Received:
        arguments = [
            {"ranges": {u: span for u, span in ranges.items() if u in shard}, "quiet": quiet, "seconds": seconds}
            for shard in self.shard_users
        ]
        answers = call_all(self.children, "drain", seconds + 60, arguments)
        users: list[str] = []
        records = Records()
        for answer in answers:
            records.extend(answer["records"], len(users))
            users.extend(answer["users"])
        return Received(users, records, _summed([answer["status"] for answer in answers]))


def _summed(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the numbers of several processes' status; keep the slowest time."""
    total: dict[str, Any] = {"errors": Counter()}
    for status in statuses:
        for key, value in status.items():
            if key == "errors":
                total["errors"].update(value)
            elif key == "seconds":
                total[key] = max(total.get(key, 0.0), value)
            else:
                total[key] = total.get(key, 0) + value
    total["errors"] = dict(total["errors"].most_common(5))
    return total
