"""What a client may send, decided without I/O: budgets and the grammar of its packets.

Every byte from the network is hostile, before and after authentication.
These pure rules say what is refused; the transport (``gateway.websocket``,
``gateway.transport``) applies them and closes the connection, counting the
refusal by its reason (:class:`gateway.errors.ClientMistake`). Nothing here
imports redis, socketio or gevent.

- :class:`InboundBudget`: frames and bytes per connection, as two token
  buckets. An honest client sends a CONNECT, a few subscribes and a pong every
  ping interval; a connection that spends faster than the budget refills is
  cut, whatever it sends.
- :func:`engineio_refusal`: the Engine.IO packets a client may send over a
  WebSocket. Anything else (an empty message, a packet type a client never
  sends, binary data as base64) is refused before python-engineio parses it.
- :func:`socketio_refusal`: the Socket.IO packets a client may send, judged
  on what python-socketio decoded. Binary packets are not part of this
  protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Frames one connection may send in a burst, and per second after it.
FRAME_BURST = 60
FRAMES_PER_SECOND = 20.0
#: Inbound bytes per second and burst are at least these, whatever the message limit.
MIN_BYTES_PER_SECOND = 16 * 1024
MIN_BYTE_BURST = 64 * 1024
#: Longest Engine.IO control packet a client sends (``3probe``, ``2probe``).
MAX_CONTROL_PACKET = 16
#: Engine.IO packets a client sends, apart from messages (``4...``).
CONTROL_PACKETS = frozenset({"1", "2probe", "3", "3probe", "5", "6"})
#: Socket.IO packet types (protocol v5).
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
#: The one namespace the gateway serves.
NAMESPACE = "/"


@dataclass(frozen=True)
class InboundLimits:
    """What one connection may send: the largest message, and its frame and byte budgets."""

    max_message_bytes: int
    frame_burst: float = FRAME_BURST
    frames_per_second: float = FRAMES_PER_SECOND
    byte_burst: float = 0.0
    bytes_per_second: float = 0.0

    @classmethod
    def for_messages_of(cls, max_message_bytes: int) -> InboundLimits:
        """Limits that let two messages of the maximum size through at once, and a quarter of one a second."""
        return cls(
            max_message_bytes,
            byte_burst=max(MIN_BYTE_BURST, 2 * max_message_bytes),
            bytes_per_second=max(MIN_BYTES_PER_SECOND, max_message_bytes / 4),
        )


class InboundBudget:
    """Two token buckets, frames and bytes, for one connection; ``spend`` says whether it may go on."""

    __slots__ = ("_limits", "_frames", "_bytes", "_at")

    def __init__(self, limits: InboundLimits, now: float) -> None:
        self._limits = limits
        self._frames = limits.frame_burst
        self._bytes = limits.byte_burst
        self._at = now

    def spend(self, nbytes: int, now: float) -> bool:
        """Take one frame of ``nbytes``; False when the connection is over its budget."""
        limits = self._limits
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._frames = min(limits.frame_burst, self._frames + elapsed * limits.frames_per_second) - 1
        self._bytes = min(limits.byte_burst, self._bytes + elapsed * limits.bytes_per_second) - nbytes
        return self._frames >= 0 and self._bytes >= 0


def engineio_refusal(message: str) -> str | None:
    """Why a client's Engine.IO packet is refused (a reason), or None when it may go on.

    A message is ``4`` followed by a Socket.IO packet type digit; python-engineio
    then keeps the rest as text and never parses it as JSON. Control packets
    are short and few: close, pong, and the probe of a transport upgrade.
    """
    if message[:1] == "4":
        return None if message[1:2].isdigit() and message[1:2].isascii() else "bad_packet"
    if message[:1] == "b":
        return "binary"
    if len(message) <= MAX_CONTROL_PACKET and message in CONTROL_PACKETS:
        return None
    return "bad_packet"


def socketio_refusal(packet_type: int, namespace: str | None, data: object, attachments: int) -> str | None:
    """Why a decoded Socket.IO packet from a client is refused, or None when it is well formed.

    Well formed: on the default namespace; CONNECT with no data or an object;
    DISCONNECT with none; EVENT with a list whose first item is the event
    name. A client never sends CONNECT_ERROR, nor an ACK (the gateway asks for
    none), and binary packets or attachments are not part of this protocol.
    """
    if attachments or packet_type in (BINARY_EVENT, BINARY_ACK):
        return "binary"
    if namespace not in (None, NAMESPACE):
        return "bad_packet"
    if packet_type == CONNECT:
        return None if data is None or isinstance(data, dict) else "bad_packet"
    if packet_type == DISCONNECT:
        return None if data is None else "bad_packet"
    if packet_type == EVENT:
        return None if isinstance(data, list) and data and isinstance(data[0], str) else "bad_packet"
    return "bad_packet"
