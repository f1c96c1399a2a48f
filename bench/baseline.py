"""The baseline: a plain Flask-SocketIO push server of the kind the gateway replaces.

What a team writes from the Flask-SocketIO documentation: the Redis message
queue so that backend jobs can emit, a JWT checked with PyJWT in the connect
handler, and a ``subscribe`` event that joins the room ``<topic>_<user>`` and
acks. No subscription registry, no seq, no history, no limits: publishers emit
``SocketIO(message_queue=url).emit(topic, payload, to=room)`` themselves.

Start (as :mod:`bench.systems` does): ``gunicorn -c bench/gunicorn_baseline.conf.py
'bench.baseline:create_app()'``, reading ``GATEWAY_REDIS_URL`` and
``GATEWAY_JWT_SECRET`` like the gateway.
"""

from __future__ import annotations

import os
from typing import Any

import jwt
from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room

#: The topics a client may subscribe to.
TOPICS = frozenset({"balance", "positions", "pnl", "orders"})


def create_app() -> Flask:
    """The Flask app with its Socket.IO server; gunicorn calls it in each worker."""
    app = Flask("baseline")
    several = int(os.environ.get("GATEWAY_WORKERS", "1")) > 1
    socketio = SocketIO(
        app, async_mode="gevent", message_queue=os.environ["GATEWAY_REDIS_URL"],
        transports=["websocket"] if several else ["polling", "websocket"],
    )
    secret = os.environ["GATEWAY_JWT_SECRET"]
    users: dict[str, str] = {}

    @socketio.on("connect")
    def connect(auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = jwt.decode(token or "", secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
        except jwt.InvalidTokenError:
            raise ConnectionRefusedError("unauthorized") from None
        users[request.sid] = str(claims["sub"])  # type: ignore[attr-defined]

    @socketio.on("subscribe")
    def subscribe(payload: Any = None) -> dict[str, Any]:
        user = users[request.sid]  # type: ignore[attr-defined]
        topics = payload.get("topics") if isinstance(payload, dict) else None
        if not isinstance(topics, list):
            return {"ok": False, "error": "invalid_topics"}
        joined = [topic for topic in topics if topic in TOPICS]
        for topic in joined:
            join_room(f"{topic}_{user}")
        return {"ok": True, "topics": joined}

    @socketio.on("disconnect")
    def disconnect(reason: Any = None) -> None:
        users.pop(request.sid, None)  # type: ignore[attr-defined]

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    return app
