"""Where a client message enters: the Socket.IO event handlers.

Each handler answers every payload, however malformed, with an ack and
never raises: a client mistake gets the error ack, a Redis failure the
``unavailable`` ack, and an unexpected fault is logged once at ERROR and
answered ``internal``. The user of every action is the connection's token
user, so no payload can reach another user's rooms or records.

A subscribe sends, before its ack and before any newer update, what the
client missed (``since``) or the latest update as a snapshot; the ack says
which, per topic: ``{"seq": 42, "replayed": 3}``, ``{"seq": 42, "snapshot": true}``
or ``{"seq": 42}`` when there was nothing to send.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import request
from flask_socketio import SocketIO, join_room, leave_room, rooms
from redis.exceptions import RedisError
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from gateway import metrics, protocol
from gateway.auth import TokenVerifier
from gateway.control import SessionControl
from gateway.errors import AuthError, BadRequest, Code
from gateway.fanout import Fanout
from gateway.history import History
from gateway.listener import Listener
from gateway.logs import FaultOnce
from gateway.subscriptions import PendingReleases, Registry

log = logging.getLogger(__name__)

Ack = dict[str, Any]
UNAVAILABLE = BadRequest(Code.UNAVAILABLE, "The subscription store is unavailable; try again shortly.")
INTERNAL = BadRequest(Code.INTERNAL, "The gateway could not handle this message.")


def current_sid() -> str:
    """The Socket.IO session id of the event being handled (set by Flask-SocketIO)."""
    sid: str = request.sid  # type: ignore[attr-defined]
    return sid


class Unauthorized(SocketIORefused):  # type: ignore[misc]
    """Refuses a connection with the contract's ``connect_error`` data.

    ``data`` repeats the reason for the JavaScript client, which exposes only
    ``message`` and ``data`` of the error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("unauthorized")
        self.error_args = {"message": "unauthorized", "reason": reason, "data": {"reason": reason}}


def answers(handler: Callable[..., Ack]) -> Callable[..., Ack]:
    """Answer every message: a client mistake (``BadRequest``) with its error ack,
    counted; an unexpected exception with one ERROR line and the ``internal`` ack."""

    @functools.wraps(handler)
    def guarded(*args: Any) -> Ack:
        try:
            return handler(*args)
        except BadRequest as exc:
            metrics.BAD_REQUESTS.labels(error=exc.code).inc()
            log.debug("bad request: %s", exc.message, extra={"sid": current_sid()})
            return exc.ack()
        except Exception:
            log.exception("%s handler failed", handler.__name__, extra={"sid": current_sid()})
            return INTERNAL.ack()

    return guarded


class Connection:
    """What this worker knows of one live connection: its user and topics.

    ``watching``: the connection holds one count of its user's channel on this
    worker (set before the wait for Redis, so that a disconnect meanwhile gives
    it back exactly once); ``counted``: it is in the user's connection count.
    """

    __slots__ = ("user", "topics", "watching", "counted", "issued_at", "expired")

    def __init__(self, user: str, counted: bool, issued_at: float | None = None) -> None:
        self.user = user
        #: its token ran out: nothing more reaches it, and it ends at exp plus the leeway
        self.expired = False
        #: when the connection's token was issued (its ``iat``), for revocations
        self.issued_at = issued_at
        self.topics: set[str] = set()
        self.watching = False
        self.counted = counted


class Gateway:
    """The handlers of one worker, bound to its registry and token verifier.

    ``connections`` mirrors this worker's records, so that they can be
    re-asserted when Redis lost them.
    """

    def __init__(
        self,
        registry: Registry,
        history: History,
        fanout: Fanout,
        listener: Listener,
        verifier: TokenVerifier,
        topics: tuple[str, ...],
        max_connections_per_user: int = 0,
        *,
        refresh_lead: float = 60.0,
        leeway: float = 5.0,
    ) -> None:
        self.registry = registry
        self.history = history
        self.fanout = fanout
        self.listener = listener
        self.verifier = verifier
        self.topics = frozenset(topics)
        self.connections: dict[str, Connection] = {}
        #: kicks, the end of each connection's token, refreshes
        self._redis_fault = FaultOnce(log, "subscription store unavailable")
        self.control = SessionControl(
            self.connections, registry, verifier, refresh_lead, leeway, max_connections_per_user, self._redis_fault
        )
        self.releases = PendingReleases(registry)
        #: set when the worker stops: its records then go all at once (Registry.drop_worker)
        self.worker_stopping = False

    def held(self) -> Iterator[tuple[str, str, set[str]]]:
        """Every live connection: ``(sid, user, topics)``."""
        for sid, connection in list(self.connections.items()):
            yield sid, connection.user, set(connection.topics)

    def reassert(self) -> int:
        """Record every live subscription of this worker again."""
        return self.registry.reassert(self.held())

    def register(self, socketio: SocketIO) -> None:
        self.control.attach(socketio.server)
        socketio.on_event("connect", self.connect)
        socketio.on_event("disconnect", self.disconnect)
        socketio.on_event("subscribe", self.subscribe)
        socketio.on_event("unsubscribe", self.unsubscribe)
        socketio.on_event("refresh", self.refresh)

    def connect(self, auth: object = None) -> None:
        """Accept a connection whose token names its user, or refuse it with the contract's reason.

        Only :class:`Unauthorized` leaves this handler: python-socketio undoes
        a refused session only then. A fault of the gateway's own is logged
        once at ERROR and refused as ``internal``.
        """
        sid = current_sid()
        try:
            token = protocol.token_from(auth, request.headers.get("Authorization"), request.args)
            identity = self.verifier.identity(token)
            user = identity.user
            counted = self.control.admit(sid, user, identity.issued_at)
        except AuthError as exc:
            metrics.CONNECT_REFUSED.labels(reason=exc.reason).inc()
            log.debug("connection refused: %s", exc, extra={"sid": sid})
            raise Unauthorized(exc.reason) from None
        except Exception:
            log.exception("connect handler failed", extra={"sid": sid})
            raise Unauthorized(Code.INTERNAL) from None
        self.connections[sid] = Connection(user, counted, identity.issued_at)
        self.control.lifetimes.track(sid, identity.expires_at)
        metrics.CONNECTIONS.inc()
        log.debug("connected", extra={"user": user, "sid": sid})

    def disconnect(self, reason: object = None) -> None:
        sid = current_sid()
        self.control.lifetimes.forget(sid)
        connection = self.connections.pop(sid, None)
        if connection is None:
            return
        metrics.CONNECTIONS.dec()
        for topic in connection.topics:
            metrics.SUBSCRIPTIONS.labels(topic=topic).dec()
        if connection.watching:
            connection.watching = False
            self.listener.unwatch(connection.user)
        if not self.worker_stopping:  # a stopping worker drops every record in a few round trips instead
            self.releases.release(sid, user=connection.user)

    @answers
    def subscribe(self, payload: object = None, *_extra: object) -> Ack:
        sid, connection = self._caller()
        user = connection.user
        wanted = protocol.parse_subscribe(payload, self.topics)
        rooms = {topic: protocol.room_name(topic, user) for topic in wanted.topics}
        try:
            with self.fanout.holding(sid, list(rooms.values())) as hold:
                self._watch(connection)
                if not connection.counted:
                    connection.counted = self.control.admit_late(sid, connection)
                for room in rooms.values():
                    join_room(room)
                seqs = self.registry.subscribe(sid, user, wanted.topics)
                found = {
                    rooms[topic]: self.history.catchup(user, topic, wanted.since.get(topic), seqs[topic])
                    for topic in wanted.topics
                }
        except RedisError:
            self._redis_fault.fault(user=user, sid=sid)
            for topic in set(wanted.topics) - connection.topics:
                leave_room(rooms[topic])
            return UNAVAILABLE.ack()
        hold.deliver(found)
        self._redis_fault.clear()
        if sid not in self.connections:  # disconnected while Redis answered: what was just recorded goes too
            self.releases.release(sid, user=user)
        else:
            for topic in set(wanted.topics) - connection.topics:
                metrics.SUBSCRIPTIONS.labels(topic=topic).inc()
            connection.topics.update(wanted.topics)
        acks = {topic: found[rooms[topic]].ack(seqs[topic]) for topic in wanted.topics}
        return {"ok": True, "topics": acks, "rejected": wanted.rejected}

    def _watch(self, connection: Connection) -> None:
        """Receive the connection's user's updates on this worker; once per connection, whatever races it.

        The connection's count is taken before the wait for Redis: a
        disconnect during the wait gives it back, and a failed wait gives it
        back unless that disconnect already did.
        """
        if connection.watching:
            return
        connection.watching = True
        try:
            self.listener.watch(connection.user)
        except RedisError:
            if connection.watching:
                connection.watching = False
                self.listener.unwatch(connection.user)
            raise

    @answers
    def refresh(self, payload: object = None, *_extra: object) -> Ack:
        sid, connection = self._caller()
        try:
            return self.control.refresh(sid, connection, payload)
        except RedisError:
            self._redis_fault.fault(user=connection.user, sid=sid)
            return UNAVAILABLE.ack()

    @answers
    def unsubscribe(self, payload: object = None, *_extra: object) -> Ack:
        sid, connection = self._caller()
        user = connection.user
        topics = protocol.parse_unsubscribe(payload, self.topics)
        named = sorted(self.topics) if topics is None else topics
        joined = set(rooms(sid))
        held = [t for t in named if protocol.room_name(t, user) in joined]
        try:
            self.registry.release(sid, named, user=user)
        except RedisError:
            self._redis_fault.fault(user=user, sid=sid)
            return UNAVAILABLE.ack()
        self._redis_fault.clear()
        for topic in connection.topics.intersection(named):
            metrics.SUBSCRIPTIONS.labels(topic=topic).dec()
        connection.topics.difference_update(named)
        for topic in held:
            leave_room(protocol.room_name(topic, user))
        return {"ok": True, "topics": held}

    def _caller(self) -> tuple[str, Connection]:
        """The sid and connection of the message being handled; ``not_connected`` if unknown."""
        sid = current_sid()
        connection = self.connections.get(sid)
        if connection is None:
            raise BadRequest(Code.NOT_CONNECTED, "This connection is not authenticated.")
        if connection.expired:
            raise BadRequest(Code.EXPIRED_TOKEN, "This connection's token expired; connect again with a new one.")
        return sid, connection
