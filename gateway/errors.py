"""The gateway's exceptions: one root, a few kinds, each caught by name.

The exceptions that mean "the client is gone" are not here: they are the
client's doing, listed once in :mod:`gateway.mistakes`.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Every code a client reads, in one table: ``error`` of an error ack, ``reason`` of ``connect_error``,
    and the reason a topic of a subscribe is rejected. Each is its string on the wire (CONTRACT.md §3)."""

    # connect_error reasons
    MISSING_TOKEN = "missing_token"
    INVALID_TOKEN = "invalid_token"
    EXPIRED_TOKEN = "expired_token"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    REVOKED_TOKEN = "revoked_token"
    WRONG_USER = "wrong_user"
    # error acks: the request was malformed, and nothing was done
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_TOPICS = "invalid_topics"
    INVALID_SINCE = "invalid_since"
    NOT_CONNECTED = "not_connected"
    # error acks and connect_error: the gateway could not do it, try again
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # a topic of a subscribe, in the ack's "rejected"
    UNKNOWN_TOPIC = "unknown_topic"


class GatewayError(Exception):
    """Root of every exception the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration variable is missing or wrong.

    Every entry point turns it into one line, ``VARIABLE: reason``, and a
    non-zero exit status.
    """

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class AuthError(GatewayError):
    """A connection's token is missing, invalid or expired.

    ``reason`` is the code sent to the client in ``connect_error``.
    """

    def __init__(self, reason: Code, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class BadRequest(GatewayError):
    """A client message the gateway cannot act on.

    Answered with the error ack; the connection stays up.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def ack(self) -> dict[str, object]:
        return {"ok": False, "error": self.code, "message": self.message}


class ClientMistake(GatewayError):
    """Something a client sent that the protocol does not allow: the connection is closed.

    ``reason`` labels ``gateway_client_errors_total``: a client's doing, counted
    and logged at DEBUG, never a traceback.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class PublishError(GatewayError):
    """Redis could not take a publish: the update was not sent."""
