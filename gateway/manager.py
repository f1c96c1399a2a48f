"""python-socketio's client manager for the gateway: its pub/sub backend, and an index of each client's rooms.

:class:`ClientManager` overrides what python-socketio documents as a pub/sub
backend's part, ``_publish`` and ``_listen``, and the public ``basic_*``
room methods:

- ``_listen`` reads the gateway's :class:`gateway.listener.Listener`. An
  update goes straight to :class:`gateway.fanout.Fanout`; a Flask-SocketIO
  queue message is judged by :class:`QueueFilter` (``GATEWAY_QUEUE_METHODS``)
  first. An emit to a user's room is the fan-out's too (held back from a
  client that catches up, like an update); python-socketio's own handlers
  get only what an operator allowed beyond that, unchanged;
- ``_publish`` publishes through the gateway's Redis client, and raises
  rather than drops when Redis is away;
- python-socketio finds a client's rooms by scanning every room of the
  namespace, on each disconnect and each ``rooms()`` call, and keeps the
  clients being connected or disconnected in lists it searches on every
  event: both quadratic when thousands of clients leave at once (a worker
  stopped, a network blip). The manager keeps an index of each client's
  rooms instead, and those clients in insertion-ordered dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import redis
import socketio

from gateway import metrics, protocol
from gateway.fanout import Fanout
from gateway.listener import Listener

log = logging.getLogger(__name__)

_UPDATE_MARK = protocol.UPDATE_MARK.encode()
_KICK_MARK = protocol.KICK_MARK.encode()


class QueueFilter:
    """What a Flask-SocketIO queue message may ask of this worker: ``GATEWAY_QUEUE_METHODS``.

    Each refusal is counted in ``gateway_queue_refused_total{reason}``, and
    logged once per reason as a WARNING.
    """

    def __init__(
        self, allowed: tuple[str, ...] = ("emit",), topics: tuple[str, ...] = protocol.DEFAULT_TOPICS
    ) -> None:
        self.allowed = frozenset(allowed)
        #: the topics whose users' rooms an emit may name
        self.topics = frozenset(topics)
        self._logged: set[str] = set()

    def method(self, message: dict[str, Any]) -> str | None:
        """What ``message`` asks (``broadcast`` for an emit to no room), or None when that is refused."""
        method = str(message.get("method"))
        if method == "emit" and message.get("room") is None:
            method = "broadcast"
        reason = self.refusal(method, message)
        if reason is None:
            if "callback" not in self.allowed:
                message.pop("callback", None)
            return method
        metrics.QUEUE_REFUSED.labels(reason=reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "fan-out refused a queue message (%s: %r); GATEWAY_QUEUE_METHODS allows %s; further ones are "
                "counted in gateway_queue_refused_total only", reason, method[:40], ",".join(sorted(self.allowed)),
            )
        return None

    def refusal(self, method: str, message: dict[str, Any]) -> str | None:
        """Why a queue message is refused (the method, or what is wrong with an emit), or None."""
        if method not in self.allowed:
            return method if method in protocol.QUEUE_METHODS else "unknown"
        if method in ("emit", "broadcast"):
            if message.get("namespace") not in (None, "/") or message.get("binary"):
                return "bad_emit"
            if method == "emit" and not protocol.is_user_room(message.get("room"), self.topics):
                return "bad_room"
        return None


class _Sids(dict[str, int]):
    """The sids python-socketio keeps in a list per namespace, with the list's ``append``, ``remove``, ``in``,
    ``len`` and iteration, duplicates included, each in O(1) but iteration."""

    __slots__ = ("_count",)

    def __init__(self, sids: Iterable[str] = ()) -> None:
        super().__init__()
        self._count = 0
        for sid in sids:
            self.append(sid)

    def append(self, sid: str) -> None:
        self[sid] = self.get(sid, 0) + 1
        self._count += 1

    def remove(self, sid: str) -> None:
        left = self[sid] - 1
        if left:
            self[sid] = left
        else:
            del self[sid]
        self._count -= 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for sid, times in self.items():
            yield from [sid] * times


class _PendingSids(dict[str, Any]):
    """python-socketio's ``pending_connect`` or ``pending_disconnect``: each namespace's list it sets becomes
    :class:`_Sids`. Its ``sid in pending[namespace]``, checked on every event, is then not a scan of every
    client leaving at the same moment."""

    def __setitem__(self, namespace: str, sids: Any) -> None:
        super().__setitem__(namespace, _Sids(sids))


class ClientManager(socketio.PubSubManager):  # type: ignore[misc]
    """The Socket.IO server's client manager, on the gateway's Redis listener and fan-out."""

    name = "gateway"
    #: where updates and emits to users go; it sends into this manager's rooms, and is set once built
    fanout: Fanout
    #: told of every kick (``Publisher.disconnect_user``) with its user; must not block the listener
    on_kick: Callable[[str], None] = staticmethod(lambda _user: None)

    def __init__(
        self,
        channel: str,
        listener: Listener,
        redis_client: redis.Redis,
        queue: QueueFilter | None = None,
    ) -> None:
        super().__init__(channel=channel, logger=log)
        self.listener = listener
        self.queue = queue or QueueFilter()
        self._redis = redis_client
        #: (namespace, sid) -> the rooms the client is in, None and its own included
        self._sid_rooms: dict[tuple[str, str], set[str | None]] = {}
        self.pending_connect = _PendingSids()
        self.pending_disconnect = _PendingSids()

    # The pub/sub backend.

    def _publish(self, data: Any) -> None:
        self._redis.publish(self.channel, self.json.dumps(data))

    def _listen(self) -> Iterator[dict[str, Any]]:
        """The queue messages python-socketio is to act on; updates and emits to users go to the fan-out."""
        for data in self.listener.messages(self.fanout):
            if data.startswith(_UPDATE_MARK):
                self.fanout.on_update(data)
                continue
            if data.startswith(_KICK_MARK):
                self._kick(data)
                continue
            message = self._queue_message(data)
            if message is not None:
                yield message
        # python-socketio calls _listen for as long as the task lives and logs an error when it returns:
        # a stopped listener ends the task the way gevent ends a greenlet it kills.
        raise gevent.GreenletExit

    def _kick(self, data: bytes) -> None:
        user = protocol.parse_kick(data)
        if user is None:
            log.warning("fan-out skipped a malformed kick message (%d bytes)", len(data))
            return
        try:
            self.on_kick(user)
        except Exception:
            log.exception("a kick of user %s failed", user)

    def _queue_message(self, data: bytes) -> dict[str, Any] | None:
        """A queue message for python-socketio's handlers, or None when it was refused or handled here."""
        try:
            message = self.json.loads(data)
        except ValueError:
            log.warning("fan-out skipped a message that is not JSON (%d bytes)", len(data))
            return None
        if not isinstance(message, dict):
            return None
        method = self.queue.method(message)
        if method is None or (method != "callback" and message.get("host_id") == self.host_id):
            return None
        if method == "emit" and message.get("callback") is None:
            try:
                self.fanout.on_emit(message)
            except Exception:
                log.exception("fan-out of an emit to %s failed", str(message.get("room"))[:200])
            return None
        if method in ("emit", "broadcast"):
            self.fanout.passed_on(message)
        return message

    # The index of each client's rooms.

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
