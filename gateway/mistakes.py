"""What clients do that is not the gateway's fault: leaving, and sending what the protocol forbids.

Both are normal on the internet, at every stage of a connection: during the
HTTP request, the WebSocket upgrade, before the Socket.IO CONNECT and after.
Neither is ever a traceback or a line at WARNING or above:

- a client gone while the gateway reads or writes (the exceptions in
  :data:`CLIENT_GONE`, listed here once) is counted as
  ``gateway_send_failures_total{reason="client_gone"}``;
- a client mistake (a frame too large, a malformed packet, a flood, a session
  that never authenticates...) is counted as
  ``gateway_client_errors_total{reason=...}`` and closes the connection.

Each is logged at DEBUG at most. The libraries under the gateway report such
events in their own logs, some at ERROR with a traceback; :class:`LibraryLog`
stands in for their loggers and sorts what they say into the same counts,
passing on only what is not a client's doing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from geventwebsocket.exceptions import WebSocketError

from gateway import metrics
from gateway.errors import ClientMistake

log = logging.getLogger(__name__)

#: The exceptions that mean "the peer is gone", and nothing else.
CLIENT_GONE: tuple[type[BaseException], ...] = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    WebSocketError,
)
#: What Werkzeug and gevent's WSGI server raise when a response is written
#: after its client went away before the status line was sent.
WRITE_BEFORE_START = "write() before start_response"


def is_client_gone(exc: BaseException) -> bool:
    if isinstance(exc, CLIENT_GONE):
        return True
    return isinstance(exc, AssertionError) and WRITE_BEFORE_START in str(exc)


def client_gone(exc: BaseException | None = None, **context: Any) -> None:
    """Count a client that left while the gateway read or wrote: one DEBUG line, no traceback."""
    metrics.SEND_FAILURES.labels(reason="client_gone").inc()
    log.debug("client gone: %s", exc.__class__.__name__ if exc else "connection ended", extra=context)


def client_mistake(reason: str, **context: Any) -> None:
    """Count something a client sent that the protocol does not allow: one DEBUG line."""
    metrics.CLIENT_ERRORS.labels(reason=reason).inc()
    log.debug("client mistake: %s", reason, extra=context)


def connect_refused(reason: str, **context: Any) -> None:
    """Count a handshake refused before any Socket.IO session (a refused origin, a full worker)."""
    metrics.CONNECT_REFUSED.labels(reason=reason).inc()
    log.debug("connection refused: %s", reason, extra=context)


#: How python-engineio and python-socketio word what a client got wrong (the
#: start of the message), and the reason it is counted under. A refused origin
#: is counted with the refused connections, as before any session.
LIBRARY_MESSAGES: tuple[tuple[str, str], ...] = (
    ("Invalid transport", "bad_transport"),
    ("The client is using an unsupported version", "bad_version"),
    ("Invalid JSONP index number", "bad_handshake"),
    ("Invalid websocket upgrade", "bad_handshake"),
    ("Invalid session", "bad_session"),
    ("Socket for session", "bad_session"),
    ("Unexpected HTTP request for session", "bad_session"),
    ("Method ", "bad_request"),
    ("Unknown callback received", "bad_packet"),
)
ORIGIN_REFUSED = "is not an accepted origin"
NOT_CONNECTED = "is not connected to namespace"
SEND_TO_GONE = "Cannot send to sid"


def library_reason(message: str) -> str | None:
    """The client-mistake reason of a library log message, or None when it is not one."""
    if NOT_CONNECTED in message:
        return "not_connected"
    for start, reason in LIBRARY_MESSAGES:
        if message.startswith(start):
            return reason
    return None


class LibraryLog:
    """The logger python-engineio and python-socketio are given.

    - ``info`` (a line per packet, at the libraries' INFO) goes to the
      gateway's DEBUG, when that is on;
    - ``warning`` and ``error``: a refused origin, a client's mistake or a send
      to a client already gone are counted, at DEBUG; anything else passes on
      at its level, with the library's logger name;
    - ``exception``: a real fault, logged once at ERROR with its traceback,
      unless the exception is itself a departure or a client mistake.
    """

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def debug(self, msg: str, *args: Any) -> None:
        self._log.debug(msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._log.debug(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._sort(logging.WARNING, msg, args)

    def error(self, msg: str, *args: Any) -> None:
        self._sort(logging.ERROR, msg, args)

    def exception(self, msg: str, *args: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None and is_client_gone(exc):
            client_gone(exc)
        elif isinstance(exc, ClientMistake):
            client_mistake(exc.reason)
        else:
            self._log.error(msg, *args, exc_info=True)

    def _sort(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        message = msg % args if args else msg
        if ORIGIN_REFUSED in message:
            connect_refused("bad_origin")
        elif message.startswith(SEND_TO_GONE):
            client_gone()
        elif (reason := library_reason(message)) is not None:
            client_mistake(reason)
        else:
            self._log.log(level, "%s", message)
