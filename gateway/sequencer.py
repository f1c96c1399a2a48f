"""Per-room order of one worker's updates, without I/O: every seq once, in order, also while a client catches up.

A room is one user's topic (``balance_4``). The fan-out asks the sequencer,
for each update it is about to send, whether the room may have it and which
of the room's clients must not get it now:

- :meth:`RoomSequencer.admit`: an update is sent only if its seq is above the
  last one sent to the room, so nothing reaches a client twice or out of
  order (a repeat after a Redis reconnect, a copy that history already sent);
- :meth:`~RoomSequencer.hold`, :meth:`~RoomSequencer.skip`,
  :meth:`~RoomSequencer.release`: a client being brought up to date (its
  missed updates read from history) has the room's live updates held back
  for it meanwhile, then gets those that are newer than what history sent
  (:func:`newer`);
- :meth:`~RoomSequencer.settle`: after a catch-up, the room's count starts
  where its first client now is, or, when history ran ahead of the live
  stream, the live copies of what was sent skip that client;
- :meth:`~RoomSequencer.reset` (Redis lost its data: every count starts
  again at 1) and :meth:`~RoomSequencer.forget` (rooms no longer served).

An emit through Flask-SocketIO's queue carries no seq of the gateway's
(``seq`` None): it is never deduplicated, only held back like updates.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

#: No client to skip.
NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Held:
    """A live update held back from a client that catches up.

    Either an Engine.IO ``packet`` built once for the room, or a queue
    message's ``data`` for Socket.IO to encode; ``seq`` when it is an update.
    """

    seq: int | None
    event: str
    data: Any = None
    packet: Any = None


def newer(held: Iterable[Held], last: int) -> tuple[list[Held], int]:
    """What of ``held`` a client that was sent up to seq ``last`` still needs, and its last seq after them."""
    wanted = []
    for item in held:
        if item.seq is None:
            wanted.append(item)
        elif item.seq > last:
            wanted.append(item)
            last = item.seq
    return wanted, last


class RoomSequencer:
    """The seq state of every room one worker serves."""

    __slots__ = ("last_seq", "_held", "_ahead")

    def __init__(self) -> None:
        #: room -> the last seq this worker sent it
        self.last_seq: dict[str, int] = {}
        #: room -> sid -> updates held back while the sid catches up
        self._held: dict[str, dict[str, list[Held]]] = {}
        #: room -> sid -> seq that catch-up sent the sid ahead of the room's live stream
        self._ahead: dict[str, dict[str, int]] = {}

    def admit(self, room: str, seq: int) -> bool:
        """Whether ``seq`` is new to ``room``; then it becomes the room's last."""
        if seq <= self.last_seq.get(room, 0):
            return False
        self.last_seq[room] = seq
        return True

    def skip(self, room: str, seq: int | None, event: str, *, data: Any = None, packet: Any = None) -> AbstractSet[str]:
        """Clients of ``room`` not to send this update now: those catching up (it is held for them) and those
        ahead of it. Nothing is built for a room where no client catches up, the common case."""
        held = self._held.get(room)
        if not held and room not in self._ahead:
            return NOBODY
        skip = set(held or ())
        if held:
            item = Held(seq, event, data, packet)
            for queue in held.values():
                queue.append(item)
        if seq is not None and room in self._ahead:
            skip.update(self._already_sent(room, seq))
        return skip

    def hold(self, sid: str, rooms: Iterable[str]) -> None:
        """Hold the live updates of ``rooms`` back from ``sid`` from now on."""
        for room in rooms:
            self._held.setdefault(room, {})[sid] = []

    def release(self, sid: str, room: str) -> list[Held]:
        """Stop holding ``room`` back from ``sid``; return what was held, in arrival order."""
        held = self._held.get(room, {})
        queue = held.pop(sid, [])
        if not held:
            self._held.pop(room, None)
        return queue

    def settle(self, sid: str, room: str, last: int, current: int) -> None:
        """``sid`` was sent up to seq ``last`` of ``room`` by its catch-up; Redis was at ``current`` then."""
        if room not in self.last_seq:
            # A room new to this worker starts where its first client now is:
            # live copies at or below it are repeats, and after a Redis
            # reconnect the listener replays from there.
            self.last_seq[room] = max(last, current)
        elif last > self.last_seq[room]:
            # History ran ahead of the live stream: the live copies of what
            # was just sent are still on their way, and must skip this sid.
            self._ahead.setdefault(room, {})[sid] = last

    def reset(self) -> None:
        """Redis lost its data and every count starts again at 1: what history holds is new to every room."""
        self.last_seq = dict.fromkeys(self.last_seq, 0)

    def forget(self, live: Container[str]) -> None:
        """Drop what is known of rooms not in ``live``."""
        for known in (self.last_seq, self._ahead):
            for room in [room for room in known if room not in live]:
                del known[room]

    def _already_sent(self, room: str, seq: int) -> list[str]:
        """Clients of ``room`` that catch-up already sent ``seq``; forget those now level."""
        ahead = self._ahead[room]
        skip = [sid for sid, sent in ahead.items() if sent >= seq]
        for sid in [sid for sid, sent in ahead.items() if sent <= seq]:
            del ahead[sid]
        if not ahead:
            del self._ahead[room]
        return skip
