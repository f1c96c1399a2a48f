"""The sans-I/O core: names, client payloads and update envelopes.

Pure functions only: nothing here imports redis or socketio, so every rule a
client or a publisher can hit is tested without a server.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import BadRequest, Code

#: Topic names: lower case, no ``_`` (the room separator) and no ``:``.
TOPIC_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: User ids as they travel in tokens, rooms and Redis keys.
USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@|:-]{0,127}")
#: Most topics one subscribe may name; more is a malformed request.
MAX_TOPICS_PER_REQUEST = 64
#: The Socket.IO namespace every client uses.
NAMESPACE = "/"
#: The private per-user topics a gateway serves unless GATEWAY_TOPICS says otherwise.
DEFAULT_TOPICS = ("balance", "positions", "pnl", "orders")
#: The Redis channel of Flask-SocketIO's message queue (its default), where backends' emits arrive.
QUEUE_CHANNEL = "flask-socketio"
#: What a Flask-SocketIO queue message may ask of the workers: ``emit`` to a
#: room, ``broadcast`` (an emit to no room: every client), and the library's
#: room and session control (``GATEWAY_QUEUE_METHODS``).
QUEUE_METHODS = frozenset({"emit", "broadcast", "enter_room", "leave_room", "close_room", "disconnect", "callback"})


def is_topic_name(value: object) -> bool:
    return isinstance(value, str) and TOPIC_RE.fullmatch(value) is not None


def user_id(value: object) -> str:
    """Return the wire form of a user id (a string), or raise ``ValueError``.

    Publishers may pass ints; tokens carry strings. Booleans are refused
    because ``True`` would silently become user ``"True"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"user id must be a string or an int, not {type(value).__name__}")
    text = str(value)
    if USER_ID_RE.fullmatch(text) is None:
        raise ValueError(f"user id {text[:40]!r} has characters outside [A-Za-z0-9._@|:-] or over 128")
    return text


def room_name(topic: str, user: str) -> str:
    """The room that carries one user's updates of one topic: ``balance_4``."""
    return f"{topic}_{user}"


def is_user_room(room: object, topics: Container[str]) -> bool:
    """Whether ``room`` names one user's topic, ``<topic>_<user>``, of one of ``topics``.

    A client's own room is named by its Socket.IO sid, random base64url that
    may read as ``<word>_<rest>``: only a topic of the gateway's tells them apart.
    """
    if not isinstance(room, str):
        return False
    topic, _, user = room.partition("_")
    return topic in topics and USER_ID_RE.fullmatch(user) is not None


#: The head of a control message that closes every connection of one user: ``k1 <user>``.
KICK_MARK = "k1 "


def kick_message(user: str | int) -> str:
    """The control message that closes every live connection of ``user``."""
    return KICK_MARK + user_id(user)


def parse_kick(message: bytes) -> str | None:
    """The user a kick message names, or None when it is not one."""
    if not message.startswith(KICK_MARK.encode()):
        return None
    try:
        user = message[len(KICK_MARK):].decode()
    except UnicodeDecodeError:
        return None
    return user if USER_ID_RE.fullmatch(user) else None


@dataclass(frozen=True)
class SubscribeRequest:
    """A validated ``subscribe``: known topics in order, the rest rejected."""

    topics: tuple[str, ...]
    rejected: dict[str, Code] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)


def _topic_list(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(Code.INVALID_TOPICS, "topics must be a topic name or a non-empty list of topic names.")
    if len(value) > MAX_TOPICS_PER_REQUEST:
        raise BadRequest(Code.INVALID_TOPICS, f"at most {MAX_TOPICS_PER_REQUEST} topics may be named at once.")
    if not all(isinstance(item, str) for item in value):
        raise BadRequest(Code.INVALID_TOPICS, "every topic must be a string.")
    return list(dict.fromkeys(value))


def _since(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(Code.INVALID_SINCE, "since must map topic names to the last seq received.")
    for topic, seq in value.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BadRequest(Code.INVALID_SINCE, f"since[{str(topic)[:40]!r}] must be a whole number of 0 or more.")
    return dict(value)


def parse_subscribe(payload: object, allowed: frozenset[str]) -> SubscribeRequest:
    """Validate a ``subscribe`` payload against the configured topics.

    Accepts ``{"topics": [...], "since": {...}}``, a bare list, or one string.
    Unknown topics are rejected one by one; a malformed payload raises
    :class:`BadRequest`.
    """
    since: object = None
    if isinstance(payload, dict):
        if "topics" not in payload:
            raise BadRequest(Code.INVALID_TOPICS, "subscribe needs a topics list.")
        topics, since = payload["topics"], payload.get("since")
    elif isinstance(payload, (list, str)):
        topics = payload
    else:
        raise BadRequest(Code.INVALID_PAYLOAD, "subscribe takes an object, a list of topics, or one topic.")
    names = _topic_list(topics)
    known = tuple(name for name in names if name in allowed)
    rejected = {name[:64]: Code.UNKNOWN_TOPIC for name in names if name not in allowed}
    marks = _since(since)
    return SubscribeRequest(known, rejected, {t: s for t, s in marks.items() if t in known})


def parse_unsubscribe(payload: object, allowed: frozenset[str]) -> tuple[str, ...] | None:
    """Validate an ``unsubscribe`` payload; ``None`` means every topic.

    No payload, ``{}``, ``[]`` or ``{"topics": []}`` mean every topic; an object
    that names other keys but no ``topics`` is refused, so that a misspelt
    key never unsubscribes a client from everything.
    """
    if payload is None or payload == {} or payload == []:
        return None
    if isinstance(payload, dict):
        if "topics" not in payload:
            raise BadRequest(Code.INVALID_TOPICS, "unsubscribe takes a topics list, or nothing for every topic.")
        if payload["topics"] in (None, []):
            return None
        payload = payload["topics"]
    elif not isinstance(payload, (list, str)):
        raise BadRequest(Code.INVALID_PAYLOAD, "unsubscribe takes an object, a list of topics, or one topic.")
    return tuple(name for name in _topic_list(payload) if name in allowed)


def encode_data(data: object) -> str:
    """Serialise an update's data as strict JSON, or raise ``ValueError``.

    Decimals, datetimes, bytes, sets and NaN are refused here, before anything
    is sent, instead of being dropped later by the message queue.
    """
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"update data is not JSON-serialisable: {exc}") from None


#: How an update starts on a user's channel; anything else there is a
#: Flask-SocketIO queue message (an emit made through its message queue).
UPDATE_MARK = "u1 "


@dataclass(frozen=True)
class Envelope:
    """An update in the parts the atomic Redis publish joins around its ``seq``.

    The payload clients receive is ``payload_head + seq + payload_tail``; it is
    kept as history as is, and published as ``message_head + seq + "\n" +
    payload`` (see :class:`Routed`). Everything but the seq is encoded once,
    here; the seq is only known inside the script.
    """

    payload_head: str
    payload_tail: str
    message_head: str

    def payload(self, seq: int) -> str:
        return f"{self.payload_head}{seq}{self.payload_tail}"

    def with_seq(self, seq: int) -> str:
        return f"{self.message_head}{seq}\n{self.payload(seq)}"


def update_envelope(*, topic: str, user: str, ts: float, data_json: str) -> Envelope:
    """Build one update, and the message that carries it to the workers.

    The payload is ``{"topic", "user_id", "seq", "ts", "data"}``, emitted as
    event ``topic`` to room ``topic_user``.
    """
    if not math.isfinite(ts):
        raise ValueError("ts must be finite")
    q = json.dumps
    stamp = repr(round(ts, 6))
    return Envelope(
        payload_head="".join(['{"topic":', q(topic), ',"user_id":', q(user), ',"seq":']),
        payload_tail="".join([',"ts":', stamp, ',"data":', data_json, "}"]),
        message_head=f"{UPDATE_MARK}{topic} {user} {stamp} ",
    )


@dataclass(frozen=True, slots=True)
class Routed:
    """An update as a worker receives it: ``u1 <topic> <user> <ts> <seq>\n<payload>``.

    The header is all a worker reads: the payload goes to the clients as it
    was published, never decoded and encoded again.
    """

    topic: str
    user: str
    ts: float
    seq: int
    payload: str

    @property
    def room(self) -> str:
        return room_name(self.topic, self.user)

    def socketio_packet(self) -> str:
        """The Socket.IO EVENT packet of the default namespace: ``2["<topic>",<payload>]``."""
        return f'2["{self.topic}",{self.payload}]'


def event_packet(event: str, args: list[Any]) -> str:
    """The Socket.IO EVENT packet of the default namespace that emits ``event`` with ``args``."""
    return "2" + json.dumps([event, *args], separators=(",", ":"), ensure_ascii=False)


def queue_emit_args(data: object) -> list[Any]:
    """The arguments a Flask-SocketIO queue emit's ``data`` stands for, as python-socketio reads them.

    A list is the emit's arguments, except that a one-element list is its one
    argument as is; anything else is one argument, and None none.
    """
    if isinstance(data, list):
        data = data[0] if len(data) == 1 else tuple(data)
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]


def parse_routed(message: bytes | str) -> Routed:
    """Read an update message; raise ``ValueError`` when it is not one."""
    raw = text(message)
    head, newline, payload = raw.partition("\n")
    parts = head.split(" ")
    if not newline or len(parts) != 5 or f"{parts[0]} " != UPDATE_MARK:
        raise ValueError("not an update message")
    _, topic, user, ts, seq = parts
    if not is_topic_name(topic) or USER_ID_RE.fullmatch(user) is None:
        raise ValueError("update message with a bad topic or user")
    return Routed(topic, user, float(ts), int(seq), payload)


def parse_topics(text: str) -> tuple[str, ...]:
    """Parse ``GATEWAY_TOPICS``; raise ``ValueError`` naming the bad entry."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("must name at least one topic")
    for name in names:
        if not is_topic_name(name):
            raise ValueError(f"{name!r} is not a topic name ([a-z][a-z0-9-]*, at most 32)")
    return tuple(dict.fromkeys(names))


def text(value: bytes | str) -> str:
    """A Redis reply item as a string."""
    return value.decode() if isinstance(value, bytes) else value


def as_set(values: Iterable[bytes | str]) -> set[str]:
    """Decode a Redis set reply into a set of strings."""
    return {text(v) for v in values}


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token of an ``Authorization: Bearer <jwt>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_from(auth: object, authorization: str | None, query: Mapping[str, str]) -> str | None:
    """Find the connection's token: handshake auth, then header, then query."""
    if isinstance(auth, dict):
        token = auth.get("token")
        if isinstance(token, str) and token:
            return token
    return bearer_token(authorization) or query.get("token") or None
