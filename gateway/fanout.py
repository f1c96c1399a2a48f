"""Where an update is delivered: from the listener to this worker's rooms, once per seq, in order.

Routing: each user's updates travel on a channel of their own
(``<prefix>:u:<user>``); a worker listens to the channels of the users it
holds connections of, plus Flask-SocketIO's shared channel for emits made
through its message queue (:class:`gateway.listener.Listener`, read by
:class:`gateway.manager.ClientManager`). :class:`Fanout` is the listener's
sink and sends to the clients through :class:`Connections`, the one door
into Engine.IO (:class:`gateway.engine.EngineConnections`). A failing send
is logged once with its traceback and stops nothing.

Speed: an update on a user's channel (``u1 <topic> <user> <ts> <seq>``, then
the payload; see :class:`gateway.protocol.Routed`) is sent to the room's
clients as it was published: the worker reads its header, never decodes and
encodes its JSON, and builds one Engine.IO packet for all the room's
clients. Its counts go to /metrics in batches (:class:`metrics.FanoutTally`).

Ordering and catch-up, per room (one user's topic) on this worker, decided
by :class:`gateway.sequencer.RoomSequencer` without I/O:

- an update is sent only if its seq is above the last one this worker
  sent to the room, so nothing reaches a client twice or out of order;
- after a reconnect, before reading on, each room is sent what history
  holds past its last seq, and a Redis that lost its counters is noticed;
- a client being brought up to date (:meth:`Fanout.holding`) has its live
  updates held back until what it missed was sent, then gets the held ones
  that are newer: every seq once, in order.

A Flask-SocketIO emit to a user's room is delivered every time, unchanged:
the gateway reads no seq it did not assign, and only holds it back, like an
update, from a client that catches up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from engineio import packet as eio_packet
from redis.exceptions import RedisError

from gateway import metrics, protocol
from gateway.history import Catchup, History
from gateway.listener import POLL_SECONDS
from gateway.sequencer import Held, RoomSequencer, newer

log = logging.getLogger(__name__)

#: Seconds the fan-out's counts may wait in memory before they are written to /metrics.
FLUSH_SECONDS = 0.25


class Connections(Protocol):
    """This worker's clients, as the fan-out reaches them."""

    def members(self, room: str | None) -> Mapping[str, str]:
        """The clients in ``room``: Socket.IO sid -> Engine.IO sid.

        Each client is alone in the room of its sid; the room None holds every client.
        """

    def send(self, eio_sid: str, packet: eio_packet.Packet) -> None:
        """Queue ``packet`` for one Engine.IO session."""


def _message(socketio_packet: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, socketio_packet)


class Fanout:
    """The listener's sink: updates and queue emits to local rooms, with the catch-up of subscribing clients."""

    def __init__(self, connections: Connections, history: History, topics: tuple[str, ...] = ()) -> None:
        self.connections = connections
        self.history = history
        #: topics counted by name; other event names of queue emits are counted as "other"
        self.topics = frozenset(topics)
        #: called after the listener came back (the heartbeat re-asserts records)
        self.on_reconnect: Callable[[], None] = lambda: None
        #: each room's order: its last seq, the clients catching up and what is held for them
        self.sequencer = RoomSequencer()
        #: the Redis data generation the seqs belong to (see _check_epoch)
        self.epoch: str | None = None
        self.tally = metrics.FanoutTally()
        self._flushed = time.monotonic()

    # The listener's sink.

    def on_connect(self, again: bool) -> None:
        if self.epoch is None:
            self._check_epoch()
        if again:
            self._replay_missed()
            self.on_reconnect()

    def on_idle(self, busy: bool) -> float:
        """Write the counts to /metrics every ``FLUSH_SECONDS``, busy or idle; return the next read's wait."""
        now = time.monotonic()
        if not busy or now - self._flushed >= FLUSH_SECONDS:
            self.tally.flush()
            self._flushed = now
        return FLUSH_SECONDS if self.tally else POLL_SECONDS

    # What arrives.

    def on_update(self, message: bytes) -> None:
        """An update from a user's channel, to its room."""
        try:
            update = protocol.parse_routed(message)
        except ValueError:
            log.warning("fan-out skipped a malformed update message (%d bytes)", len(message))
            return
        self.tally.received[update.topic] += 1
        try:
            sent = self._send_seq(update.room, update.topic, update.seq, update.socketio_packet)
        except Exception:
            log.exception("fan-out of an update to %s failed", update.room)
            return
        if sent:
            self.tally.latencies.append(max(0.0, time.time() - update.ts))

    def on_emit(self, message: dict[str, Any]) -> None:
        """A Flask-SocketIO queue emit to a user's room: its data to the room's clients, unchanged, every time."""
        event, room, data = str(message.get("event")), str(message.get("room")), message.get("data")
        label = self.label(event)
        self.tally.received[label] += 1
        members = self.connections.members(room)
        if not members:
            return
        packet = _message(protocol.event_packet(event, protocol.queue_emit_args(data)))
        skip = self.sequencer.skip(room, None, event, data=data, packet=packet)
        self.tally.delivered[label] += self._send_all(members, packet, skip)

    def passed_on(self, message: dict[str, Any]) -> None:
        """Count a queue emit python-socketio delivers (to every client, or with a callback)."""
        label = self.label(str(message.get("event")))
        self.tally.received[label] += 1
        self.tally.delivered[label] += len(self.connections.members(message.get("room")))

    def label(self, event: str) -> str:
        """The event's name in /metrics: a topic, or ``other``."""
        return event if event in self.topics else "other"

    def _send_seq(self, room: str, topic: str, seq: int, encode: Callable[[], str]) -> bool:
        """Send update ``seq`` to the room's clients unless the room had it; True when sent."""
        members = self.connections.members(room)
        if not members:
            return False
        if not self.sequencer.admit(room, seq):
            self.tally.skipped[topic] += 1
            return False
        packet = _message(encode())
        skip = self.sequencer.skip(room, seq, topic, packet=packet)
        self.tally.delivered[topic] += self._send_all(members, packet, skip)
        return True

    def _send_all(self, members: Mapping[str, str], packet: eio_packet.Packet, skip: Any) -> int:
        sent = 0
        for sid, eio_sid in list(members.items()):
            if sid not in skip:
                self.connections.send(eio_sid, packet)
                sent += 1
        return sent

    def _send_to(self, sid: str, packet: eio_packet.Packet) -> None:
        eio_sid = self.connections.members(sid).get(sid)
        if eio_sid is not None:
            self.connections.send(eio_sid, packet)

    # Catch-up.

    def holding(self, sid: str, rooms: list[str]) -> HeldBack:
        """Hold the live updates of ``rooms`` back from ``sid`` while it is brought up to date.

        ``with fanout.holding(sid, rooms) as hold:`` join the rooms and read
        what the client missed; then ``hold.deliver(found)`` sends it, in
        order, followed by the held updates newer than it.
        """
        return HeldBack(self, sid, rooms)

    def deliver_caught_up(self, sid: str, room: str, caught: Catchup, held: list[Held]) -> None:
        """Send ``sid`` what it missed of ``room``, then what was held back from it that is newer."""
        last = 0
        for missed in caught.updates:
            topic = str(missed["topic"])
            self._send_to(sid, _message(protocol.event_packet(topic, [missed])))
            last = int(missed["seq"])
        # The client is level with the seq history was read at: what was held up to it, it has
        # (sent just now, or already held when it subscribed, or behind the snapshot it was sent).
        wanted, last = newer(held, max(last, caught.current))
        for item in wanted:
            self._send_to(sid, item.packet)
        self.sequencer.settle(sid, room, last, caught.current)

    def forget_empty_rooms(self) -> None:
        """Drop what is known of rooms this worker no longer serves."""
        self.sequencer.forget(_Occupied(self.connections))

    # Redis failures.

    def _check_epoch(self) -> None:
        """Notice a Redis that lost its data: its epoch key is gone or new.

        Then every seq count started again at 1, so the rooms' last seqs are
        forgotten: what history holds is new to the clients.
        """
        epoch = self.history.epoch()
        if self.epoch is not None and epoch != self.epoch:
            log.warning("Redis lost its data: update counts start again at 1")
            self.sequencer.reset()
        self.epoch = epoch

    def _replay_missed(self) -> None:
        """After a reconnect: send every served room what it missed, before reading on."""
        self.forget_empty_rooms()
        try:
            self._check_epoch()
        except RedisError as exc:
            log.warning("fan-out could not check for lost data: %s", exc)
            return
        last_seq = self.sequencer.last_seq
        rooms = list(last_seq)
        asked = []
        for room in rooms:
            topic, _, user = room.partition("_")
            asked.append((user, topic, last_seq[room]))
        try:
            found = self.history.missed(asked)
        except RedisError as exc:
            log.warning("fan-out could not replay what %d rooms missed: %s", len(rooms), exc)
            return
        for room, (_, topic, _), missed in zip(rooms, asked, found, strict=True):
            for update in missed.updates:
                if missed.snapshot:
                    self.sequencer.last_seq[room] = 0  # a snapshot repeats a seq the room may hold
                self._send_seq(room, topic, int(update["seq"]), partial(protocol.event_packet, topic, [update]))
            if missed.updates:
                metrics.UPDATES_REPLAYED.labels(topic=topic).inc(len(missed.updates))


class _Occupied:
    """The rooms that have a client, as a container."""

    __slots__ = ("_connections",)

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def __contains__(self, room: object) -> bool:
        return isinstance(room, str) and bool(self._connections.members(room))


class HeldBack:
    """One client's live updates held back in some rooms, from ``with`` until :meth:`deliver`."""

    __slots__ = ("_fanout", "_sid", "_rooms", "_held")

    def __init__(self, fanout: Fanout, sid: str, rooms: list[str]) -> None:
        self._fanout = fanout
        self._sid = sid
        self._rooms = rooms
        self._held: dict[str, list[Held]] = {}

    def __enter__(self) -> HeldBack:
        self._fanout.sequencer.hold(self._sid, self._rooms)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop holding, whatever happened; what was held waits for :meth:`deliver`."""
        self._held = {room: self._fanout.sequencer.release(self._sid, room) for room in self._rooms}

    def deliver(self, found: dict[str, Catchup]) -> None:
        """Send each room what the client missed (``found``), then the held updates newer than it."""
        for room in self._rooms:
            self._fanout.deliver_caught_up(self._sid, room, found.get(room, Catchup()), self._held.get(room, []))
