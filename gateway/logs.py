"""Logging, configured once per process: ``text`` for people, ``json`` for machines.

Context travels in ``extra=`` (user, sid, worker, topic) and is shown in both
formats. Expected events go to DEBUG; a real fault is logged once at ERROR
with its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

#: ``extra=`` keys shown with every line that carries them.
CONTEXT_KEYS = ("user", "sid", "worker", "topic", "path")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(context)s"


class ContextFilter(logging.Filter):
    """Renders the context keys of a record as `` key=value`` for text logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        pairs = [f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key)]
        record.context = (" " + " ".join(pairs)) if pairs else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, pid, message, context, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key) for key in CONTEXT_KEYS if hasattr(record, key)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def handler(log_format: str) -> logging.Handler:
    """A stderr handler in the given format (also used for gunicorn's logs)."""
    stream = logging.StreamHandler(sys.stderr)
    stream.addFilter(ContextFilter())
    stream.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return stream


def configure(level: str, log_format: str) -> None:
    """Route every logger of this process to one stderr handler."""
    root = logging.getLogger()
    root.handlers[:] = [handler(log_format)]
    root.setLevel(level)
    # gevent-websocket reports each request and each client's handshake mistake
    # at INFO and WARNING; the gateway counts those itself. python-engineio and
    # python-socketio log through gateway.mistakes.LibraryLog, which sorts.
    logging.getLogger("geventwebsocket").setLevel(max(logging.ERROR, root.level))


def gunicorn_logconfig(level: str, log_format: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error and access logs in the gateway's format."""
    formatter: dict[str, Any] = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "gateway",
        "filters": ["context"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"gateway": formatter},
        "handlers": {"stderr": handler},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


class FaultOnce:
    """A recurring fault (Redis away) logged at ERROR once, then at DEBUG until it clears."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self.logger = logger
        self.message = message
        self.active = False

    def fault(self, **context: Any) -> None:
        """Log the exception being handled."""
        if self.active:
            self.logger.debug(self.message, exc_info=True, extra=context)
            return
        self.active = True
        self.logger.error(self.message, exc_info=True, extra=context)

    def clear(self) -> None:
        if self.active:
            self.active = False
            self.logger.warning("recovered: %s", self.message)
