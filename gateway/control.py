"""Who may stay connected: the per-user limit, revocations, kicks, the token's end and refreshes.

A connection lives no longer than its token (contract §3, "Session
lifetime"), and the backend can end every connection of a user at once
(contract §4, "Control"):

- **the token's end** (:class:`gateway.lifetime.Lifetimes`):
  ``GATEWAY_TOKEN_REFRESH_LEAD`` seconds before ``exp`` the client gets
  ``token_expiring`` with ``{"exp": ...}``; at ``exp`` it leaves its rooms, so
  that nothing published later reaches it, and any message but a
  disconnect is answered ``expired_token``; at ``exp`` plus
  ``GATEWAY_JWT_LEEWAY`` it gets a Socket.IO DISCONNECT
  (``gateway_sessions_expired_total``);
- **a refresh** with a valid token of the same user, not revoked, moves the
  connection's ``exp`` (``gateway_token_refreshes_total``); any other token
  is refused with its reason and changes nothing;
- **a kick** (``Publisher.disconnect_user``, ``gateway kick``) closes every
  connection of the user on this worker (``gateway_kicked_connections_total``);
  every worker of every instance hears it on the control channel.

A connection is ended with a Socket.IO DISCONNECT, which socket.io-client
does not answer by reconnecting, then its Engine.IO session is closed,
whatever the client does next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import socketio
from redis.exceptions import RedisError

from gateway import engine, metrics, protocol
from gateway.auth import TokenVerifier
from gateway.errors import AuthError, BadRequest, Code
from gateway.lifetime import EXPIRED, EXPIRING, Lifetimes
from gateway.logs import FaultOnce
from gateway.subscriptions import ADMITTED, REVOKED, Registry

log = logging.getLogger(__name__)


class Session(Protocol):
    """What control reads and marks of one live connection (:class:`gateway.events.Connection`)."""

    user: str
    topics: set[str]
    issued_at: float | None
    expired: bool


def unix(seconds: float) -> int | float:
    """A Unix time as a token has it: whole seconds as an integer."""
    return int(seconds) if seconds.is_integer() else seconds


class SessionControl:
    """Admission, kicks, token ends and refreshes for the connections of one worker (``connections``: sid ->
    session)."""

    def __init__(
        self,
        connections: Mapping[str, Session],
        registry: Registry,
        verifier: TokenVerifier,
        refresh_lead: float,
        leeway: float,
        max_per_user: int = 0,
        fault: FaultOnce | None = None,
    ) -> None:
        self.connections = connections
        #: live connections one user may have across the deployment (0: no limit)
        self.max_per_user = max_per_user
        self.fault = fault or FaultOnce(log, "subscription store unavailable")
        self.registry = registry
        self.verifier = verifier
        self.lifetimes = Lifetimes(refresh_lead, leeway, self._token_step)
        #: the Socket.IO server, once the handlers are registered
        self.server: Any = None

    def attach(self, server: socketio.Server) -> None:
        self.server = server

    # Admission: the per-user limit and revocations.

    def admit(self, sid: str, user: str, issued_at: float | None) -> bool:
        """Count the connection in its user's; raise ``too_many_connections`` at the limit, ``revoked_token``
        when its token was issued before the user's revocation.

        Redis away: the connection is let in uncounted (its subscribe needs
        Redis anyway, and counts it, revocation checked), rather than refusing
        every client.
        """
        try:
            outcome = self.registry.connect(sid, user, self.max_per_user, issued_at)
        except RedisError:
            self.fault.fault(user=user, sid=sid)
            return False
        self.fault.clear()
        if outcome == REVOKED:
            raise AuthError(Code.REVOKED_TOKEN, "the user's tokens issued before this one's revocation are refused")
        if outcome != ADMITTED:
            raise AuthError(Code.TOO_MANY_CONNECTIONS, f"user has {self.max_per_user} connections")
        return True

    def admit_late(self, sid: str, connection: Session) -> bool:
        """Count a connection let in while Redis was away; a revoked token's is refused now."""
        outcome = self.registry.connect(sid, connection.user, 0, connection.issued_at)
        if outcome == REVOKED:
            raise BadRequest(Code.REVOKED_TOKEN, "This connection's token was revoked; connect with a new one.")
        return outcome == ADMITTED

    # Kicks.

    def kick(self, user: str) -> int:
        """Close every connection of ``user`` on this worker; return how many."""
        sids = [sid for sid, session in list(self.connections.items()) if session.user == user]
        for sid in sids:
            self.close(sid)
        if sids:
            metrics.KICKED.inc(len(sids))
            log.info("user kicked: %d connections closed", len(sids), extra={"user": user})
        return len(sids)

    def close(self, sid: str) -> None:
        """A Socket.IO DISCONNECT to the client, then its session closed."""
        eio_sid = self.server.manager.eio_sid_from_sid(sid, protocol.NAMESPACE)
        self.server.disconnect(sid, namespace=protocol.NAMESPACE, ignore_queue=True)
        if eio_sid is not None:
            engine.close_session(self.server, eio_sid)

    # The token's end.

    def _token_step(self, sid: str, step: int, exp: float) -> None:
        """A step of the end of ``sid``'s token (run by the timetable's greenlet: nothing here waits)."""
        session = self.connections.get(sid)
        if session is None:
            return
        if step == EXPIRING:
            self.server.emit("token_expiring", {"exp": unix(exp)}, to=sid, namespace=protocol.NAMESPACE,
                             ignore_queue=True)
        elif step == EXPIRED:  # nothing more reaches it
            session.expired = True
            for topic in session.topics:
                self.server.leave_room(sid, protocol.room_name(topic, session.user), namespace=protocol.NAMESPACE)
        else:
            self.server.start_background_task(self._expire, sid, session.user)

    def _expire(self, sid: str, user: str) -> None:
        if sid in self.connections:
            self.close(sid)
            metrics.EXPIRED.inc()
            log.info("connection ended with its token", extra={"user": user, "sid": sid})

    # Refreshes.

    def refresh(self, sid: str, session: Session, payload: object) -> dict[str, Any]:
        """The ack of a ``refresh``; raise ``BadRequest`` (nothing changed) for a token that may not extend it.

        Raises ``RedisError`` when the revocations cannot be read.
        """
        token = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise BadRequest(Code.INVALID_TOKEN, 'refresh takes {"token": "<jwt>"}.')
        try:
            identity = self.verifier.identity(token)
        except AuthError as exc:
            code = Code.EXPIRED_TOKEN if exc.reason == Code.EXPIRED_TOKEN else Code.INVALID_TOKEN
            raise BadRequest(code, "The new token is not valid; the connection keeps its lifetime.") from None
        if identity.user != session.user:
            raise BadRequest(Code.WRONG_USER, "The new token is another user's; the connection keeps its lifetime.")
        if self.registry.is_revoked(session.user, identity.issued_at):
            raise BadRequest(Code.REVOKED_TOKEN, "The new token was revoked; the connection keeps its lifetime.")
        session.issued_at = identity.issued_at
        self.lifetimes.track(sid, identity.expires_at)
        metrics.TOKEN_REFRESHES.inc()
        return {"ok": True, "exp": unix(identity.expires_at)}
