"""The composition root: ``create_app`` builds one worker's gateway.

Production start: ``gunicorn -c gunicorn.conf.py gateway.wsgi:app``. Nothing
runs at import: ``app`` is built when gunicorn's worker first asks for it,
after gevent has patched the standard library. ``create_app`` reads the environment
(unless given a config), connects nothing until first use, and wires the
Redis client, registry, fan-out, handlers and HTTP endpoints together.
"""

from __future__ import annotations

import threading
from functools import partial

import redis
from flask import Flask
from flask_socketio import SocketIO

from gateway import engine, health, logs, metrics, protocol
from gateway.auth import TokenVerifier
from gateway.config import Config
from gateway.engine import EngineConnections, OutboundLimit
from gateway.events import Gateway
from gateway.fanout import Fanout
from gateway.history import History
from gateway.lease import Heartbeat, new_worker_id
from gateway.listener import Listener
from gateway.manager import ClientManager, QueueFilter
from gateway.mistakes import LibraryLog
from gateway.redis_client import connect
from gateway.sessions import SessionGuard, StrictPacket
from gateway.subscriptions import Registry
from gateway.transport import ClientGoneMiddleware
from gateway.worker import Draining, GatewayWorker


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app with its Socket.IO server attached."""
    config = config or Config.from_env()
    config.validate()
    logs.configure(config.log_level, config.log_format)
    assert config.redis_url is not None  # validate() guarantees it
    redis_url = config.redis_url
    client = connect(redis_url, name="gateway-worker")
    registry = Registry(client, config.key_prefix, worker_id=new_worker_id(), topics=config.topics)
    history = History(client, config.key_prefix)
    listener, manager, fanout = _fanout(config, client, history)
    verifier = TokenVerifier(config, metrics.jwks_fetched)
    gateway = Gateway(
        registry, history, fanout, listener, verifier, config.topics, config.max_connections_per_user,
        refresh_lead=config.token_refresh_lead, leeway=config.jwt_leeway,
    )
    heartbeat = Heartbeat(
        registry, config.heartbeat_seconds, gateway.reassert, gateway.releases, tidy=fanout.forget_empty_rooms
    )
    fanout.on_reconnect = heartbeat.wake

    app = Flask("gateway")
    socketio = _socketio(app, config, manager)
    engine.send_directly(socketio.server)
    engine.keep_slim_environs(socketio.server)
    gateway.register(socketio)
    # A kick closes connections, which waits on Redis: in a greenlet of its own, never in the listener's.
    manager.on_kick = partial(socketio.start_background_task, gateway.control.kick)
    guard = SessionGuard(socketio.server, config.auth_timeout)
    guard.install()
    checks = [health.redis_answers(client.ping), _listener_check(listener), _lease_check(heartbeat)]
    if verifier.jwks is not None:
        checks.append(verifier.jwks.check)
    app.register_blueprint(health.blueprint(checks, registry.published))
    stopping = threading.Event()
    app.wsgi_app = ClientGoneMiddleware(Draining(app.wsgi_app, stopping))  # type: ignore[method-assign]
    app.extensions["gateway"] = GatewayWorker(
        config, client, registry, listener, gateway, socketio, heartbeat, guard, stopping
    )
    return app


def _fanout(config: Config, client: redis.Redis, history: History) -> tuple[Listener, ClientManager, Fanout]:
    """The Redis listener, the client manager that reads it, and the fan-out that delivers what it reads."""
    assert config.redis_url is not None  # validate() guarantees it
    keys = history.keys
    # The listener's own connection never retries inside redis-py: a lost
    # connection must reach the listener, which then replays what it missed.
    listener = Listener(
        partial(connect, config.redis_url, name="gateway-fanout", command_timeout=None, retries=0),
        (protocol.QUEUE_CHANNEL, keys.control()),
        keys.channel,
    )
    manager = ClientManager(protocol.QUEUE_CHANNEL, listener, client, QueueFilter(config.queue_methods, config.topics))
    connections = OutboundLimit(EngineConnections(manager), config.send_queue_limit)
    fanout = manager.fanout = Fanout(connections, history, config.topics)
    return listener, manager, fanout


def _socketio(app: Flask, config: Config, manager: ClientManager) -> SocketIO:
    """The Socket.IO server: the gateway's client manager, packet grammar and library logs, one message of a
    connection at a time."""
    return SocketIO(
        app,
        async_mode="gevent",
        client_manager=manager,
        cors_allowed_origins=_cors(config),
        cors_credentials=False,  # no cookie or HTTP auth is ever used
        transports=list(config.transports),
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        max_http_buffer_size=config.max_message_bytes,
        serializer=StrictPacket,
        async_handlers=False,
        manage_session=False,  # no flask.session: nothing is kept per connection for it
        logger=LibraryLog("socketio.server"),
        engineio_logger=LibraryLog("engineio.server"),
    )


def _cors(config: Config) -> str | list[str] | None:
    if config.cors_origins is None:
        return None
    return "*" if config.cors_origins == ("*",) else list(config.cors_origins)


def _lease_check(heartbeat: Heartbeat) -> health.Check:
    def check() -> str | None:
        return None if heartbeat.fresh else "heartbeat_stale"

    return check


def _listener_check(listener: Listener) -> health.Check:
    def check() -> str | None:
        return None if listener.listening else "listener_down"

    return check


def __getattr__(name: str) -> Flask:
    """``gateway.wsgi:app``, built on first access so that importing is free."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["app"] = built = create_app()
    return built
