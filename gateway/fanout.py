"""Where an update is routed: Redis pub/sub to this worker's Socket.IO rooms.

Routing: each user's updates travel on a channel of their own
(``<prefix>:u:<user>``); a worker listens to the channels of the users it
holds connections of (:meth:`FanoutManager.watch`), plus Flask-SocketIO's
shared channel for emits made through its message queue.

:class:`FanoutManager` is python-socketio's client manager for Redis; the
pub/sub connection is a :class:`gateway.listener.Listener` of the gateway's
own (confirmed subscriptions, reconnection with backoff, ``listening`` for
``/readyz``), for which the manager is the sink. A malformed queue message is
logged and skipped, a failing handler is logged once with its traceback,
and neither stops the listener.

Speed: an update on a user's channel (``u1 <topic> <user> <ts> <seq>``, then
the payload; see :class:`gateway.protocol.Routed`) is sent to the room's
clients as it was published: the worker reads its header, never decodes and
encodes its JSON, and builds one Engine.IO packet for all the room's
clients. Its counts go to /metrics in batches (:class:`metrics.FanoutTally`).

Ordering and catch-up, per room (one user's topic) on this worker, decided
by :class:`gateway.sequencer.RoomSequencer` without I/O:

- an update is emitted only if its seq is above the last one this worker
  emitted to the room, so nothing reaches a client twice or out of order;
- after a reconnect, before reading on, the listener sends each room what
  history holds past its last seq (or the latest as a snapshot when history
  no longer reaches back), and notices a Redis that lost its counters;
- a client being brought up to date (:meth:`FanoutManager.holding`) has its
  live updates held back until what it missed was sent, then gets the held
  ones that are newer: every seq once, in order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from functools import partial
from typing import Any

import redis
import socketio
from engineio import packet as eio_packet
from redis.exceptions import RedisError

from gateway import metrics, protocol
from gateway.history import Catchup, History
from gateway.listener import POLL_SECONDS, Listener
from gateway.sequencer import NOBODY, Held, RoomSequencer, newer

log = logging.getLogger(__name__)

#: Seconds the fan-out's counts may wait in memory before they are written to /metrics.
FLUSH_SECONDS = 0.25
_UPDATE_MARK = protocol.UPDATE_MARK.encode()


class FanoutManager(socketio.RedisManager):  # type: ignore[misc]
    """Receives the queue channel and emits each message to local rooms."""

    name = "gateway-fanout"

    def __init__(
        self,
        channel: str,
        redis_factory: Callable[[], redis.Redis],
        history: History,
        topics: tuple[str, ...] = (),
        queue_methods: tuple[str, ...] = ("emit",),
    ) -> None:
        super().__init__(url="redis://", channel=channel, logger=log)
        self._redis_factory = redis_factory
        self.history = history
        #: the pub/sub connection: the queue channel and each watched user's channel
        self.listener = Listener(redis_factory, channel, partial(protocol.user_channel, history.prefix))
        #: topics counted by name; other event names of queue emits are counted as "other"
        self.topics = frozenset(topics)
        #: what a Flask-SocketIO queue message may ask (GATEWAY_QUEUE_METHODS)
        self.queue_methods = frozenset(queue_methods)
        self._refusals_logged: set[str] = set()
        #: called after the listener came back (the heartbeat re-asserts records)
        self.on_reconnect: Callable[[], None] = lambda: None
        #: each room's order: its last seq, the clients catching up and what is held for them
        self.sequencer = RoomSequencer()
        #: the Redis data generation the seqs belong to (see _check_epoch)
        self.epoch: str | None = None
        #: (namespace, sid) -> the rooms the client is in, None and its own included
        self._sid_rooms: dict[tuple[str, str], set[str | None]] = {}
        self.tally = metrics.FanoutTally()
        self._flushed = time.monotonic()

    @property
    def listening(self) -> bool:
        """Whether updates can reach this worker (``/readyz``)."""
        return self.listener.listening

    @property
    def receiving(self) -> threading.Event:
        """Set while the listener is subscribed to every channel, for those who wait on it."""
        return self.listener.receiving

    def stop(self) -> None:
        """Ask the listener to finish; it does within a second."""
        self.listener.stop()

    def watch(self, user: str) -> None:
        """Receive ``user``'s updates here; return once Redis confirmed it (:meth:`Listener.watch`)."""
        self.listener.watch(user)

    def unwatch(self, user: str) -> None:
        """One local connection of ``user`` no longer needs its channel."""
        self.listener.unwatch(user)

    # python-socketio finds a client's rooms by scanning every room of the
    # namespace, on each disconnect and each rooms() call: quadratic when
    # thousands of clients leave at once (a worker stopped, a network blip).
    # The manager keeps an index of each client's rooms instead.

    def basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._sid_rooms.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._sid_rooms.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [room for room in self._sid_rooms.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """As python-socketio's, but leaving only the client's own rooms."""
        for room in self._sid_rooms.pop((namespace, sid), set()):
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    # The listener's sink, and python-socketio's backend parts.

    def _thread(self) -> None:
        """python-socketio's listening task: the gateway's listener, with this manager as its sink."""
        self.listener.run(self)

    def _publish(self, data: Any) -> None:
        """Publish on the queue channel through the gateway's Redis client; raises rather than drops."""
        self._redis_factory().publish(self.channel, self.json.dumps(data))

    def on_message(self, data: bytes) -> None:
        if data.startswith(_UPDATE_MARK):
            self._route(data)
            return
        try:
            message = self.json.loads(data)
        except ValueError:
            log.warning("fan-out skipped a message that is not JSON (%d bytes)", len(data))
            return
        if isinstance(message, dict):
            self._dispatch(message)

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

    def _route(self, message: bytes) -> None:
        """Send an update from a user's channel to its room."""
        try:
            update = protocol.parse_routed(message)
        except ValueError:
            log.warning("fan-out skipped a malformed update message (%d bytes)", len(message))
            return
        try:
            self._emit_update(update)
        except Exception:
            log.exception("fan-out of an update to %s failed", update.room)

    def _emit_update(self, update: protocol.Routed) -> None:
        """Emit to the local room: once per seq, in order, holding back clients that catch up."""
        self.tally.received[update.topic] += 1
        if self._emit_seq(update.room, update.topic, update.seq, update.socketio_packet):
            self.tally.latencies.append(max(0.0, time.time() - update.ts))

    def _emit_seq(self, room: str, topic: str, seq: int, encode: Callable[[], str]) -> bool:
        """Send update ``seq`` to the room's clients unless the room had it; True when sent."""
        members = self.rooms.get("/", {}).get(room)
        if not members or not self._advance(room, topic, seq):
            return False
        packet = eio_packet.Packet(eio_packet.MESSAGE, encode())
        skip = self.sequencer.skip(room, seq, topic, packet=packet)
        sent = 0
        for sid, eio_sid in list(members.items()):
            if sid not in skip:
                self.server._send_eio_packet(eio_sid, packet)
                sent += 1
        self.tally.delivered[topic] += sent
        return True

    def _advance(self, room: str, topic: str, seq: int) -> bool:
        """Whether ``seq`` is new to ``room`` (then it becomes the room's last); a repeat is counted as skipped."""
        if self.sequencer.admit(room, seq):
            return True
        self.tally.skipped[topic] += 1
        return False

    def _handle_emit(self, message: dict[str, Any]) -> None:
        """A Flask-SocketIO queue message: its payload to the room, unchanged, every time.

        The gateway reads no ``seq`` it did not assign: a compatibility emit is
        never deduplicated, only held back, like updates, from a client that
        catches up.
        """
        event = str(message.get("event"))
        label = event if event in self.topics else "other"
        room = message.get("room")
        members = self.rooms.get("/", {}).get(room, ())
        self.tally.received[label] += 1
        if not members:
            return
        skip: AbstractSet[str] = NOBODY
        if isinstance(room, str):
            skip = self.sequencer.skip(room, None, event, data=message.get("data"))
        if skip:
            message = {**message, "skip_sid": list(skip)}
        super()._handle_emit(message)
        self.tally.delivered[label] += len(members) - len(skip)

    def holding(self, sid: str, rooms: list[str]) -> HeldBack:
        """Hold the live updates of ``rooms`` back from ``sid`` while it is brought up to date.

        ``with fanout.holding(sid, rooms) as hold:`` join the rooms and read
        what the client missed; then ``hold.deliver(found)`` sends it, in
        order, followed by the held updates newer than it.
        """
        return HeldBack(self, sid, rooms)

    def _deliver_caught_up(self, sid: str, room: str, caught: Catchup, held: list[Held]) -> None:
        last = 0
        for missed in caught.updates:
            self._send(sid, str(missed["topic"]), missed)
            last = int(missed["seq"])
        # The client is level with the seq history was read at: what was held up to it, it has
        # (sent just now, or already held when it subscribed, or behind the snapshot it was sent).
        wanted, last = newer(held, max(last, caught.current))
        for item in wanted:
            self._deliver(sid, item)
        self.sequencer.settle(sid, room, last, caught.current)

    def _send(self, sid: str, event: str, data: Any) -> None:
        self.server.emit(event, data, to=sid, namespace="/", ignore_queue=True)

    def _deliver(self, sid: str, item: Held) -> None:
        if item.packet is None:
            data = item.data
            self._send(sid, item.event, data[0] if isinstance(data, list) and len(data) == 1 else data)
            return
        eio_sid = self.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self.server._send_eio_packet(eio_sid, item.packet)

    def forget_empty_rooms(self) -> None:
        """Drop what is known of rooms this worker no longer serves."""
        self.sequencer.forget(self.rooms.get("/", {}))

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
                self._emit_seq(room, topic, int(update["seq"]), partial(_event_packet, topic, update))
            if missed.updates:
                metrics.UPDATES_REPLAYED.labels(topic=topic).inc(len(missed.updates))

    def _dispatch(self, data: dict[str, Any]) -> None:
        """Act on a Flask-SocketIO queue message, if GATEWAY_QUEUE_METHODS allows what it asks."""
        method = str(data.get("method"))
        if method == "emit" and data.get("room") is None:
            method = "broadcast"
        refusal = self._queue_refusal(method, data)
        if refusal is not None:
            self._refuse(refusal, method)
            return
        if method != "callback" and data.get("host_id") == self.host_id:
            return
        handler = {
            "emit": self._handle_emit,
            "broadcast": self._handle_emit,
            "callback": self._handle_callback,
            "disconnect": self._handle_disconnect,
            "enter_room": self._handle_enter_room,
            "leave_room": self._handle_leave_room,
            "close_room": self._handle_close_room,
        }[method]
        if "callback" not in self.queue_methods:
            data.pop("callback", None)
        try:
            handler(data)
        except Exception:
            log.exception("fan-out of a %r message failed", method)

    def _queue_refusal(self, method: str, data: dict[str, Any]) -> str | None:
        """Why a queue message is refused (the method, or what is wrong with an emit), or None."""
        if method not in self.queue_methods:
            return method if method in protocol.QUEUE_METHODS else "unknown"
        if method in ("emit", "broadcast"):
            if data.get("namespace") not in (None, "/") or data.get("binary"):
                return "bad_emit"
            if method == "emit" and not protocol.is_user_room(data.get("room")):
                return "bad_room"
        return None

    def _refuse(self, reason: str, method: str) -> None:
        metrics.QUEUE_REFUSED.labels(reason=reason).inc()
        if reason in self._refusals_logged:
            return
        self._refusals_logged.add(reason)
        log.warning(
            "fan-out refused a queue message (%s: %r); GATEWAY_QUEUE_METHODS allows %s; further ones are counted "
            "in gateway_queue_refused_total only", reason, method[:40], ",".join(sorted(self.queue_methods)),
        )


def _event_packet(topic: str, update: dict[str, Any]) -> str:
    """The Socket.IO EVENT packet of an update read back from history."""
    return "2" + json.dumps([topic, update], separators=(",", ":"), ensure_ascii=False)


class HeldBack:
    """One client's live updates held back in some rooms, from ``with`` until :meth:`deliver`."""

    __slots__ = ("_fanout", "_sid", "_rooms", "_held")

    def __init__(self, fanout: FanoutManager, sid: str, rooms: list[str]) -> None:
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
            self._fanout._deliver_caught_up(self._sid, room, found.get(room, Catchup()), self._held.get(room, []))
