"""When each connection's token runs out: a warning before, delivery stopped at ``exp``, the end after.

A connection lives no longer than its token (contract §3, "Session
lifetime"). :class:`Lifetimes` keeps one timetable for every connection of a
worker, run by one greenlet, with three steps per token:

- ``GATEWAY_TOKEN_REFRESH_LEAD`` seconds before ``exp``: the client is told
  (``token_expiring`` with ``{"exp": ...}``) and may ``refresh``;
- at ``exp``: nothing more is delivered to it (it leaves its rooms);
- at ``exp`` plus ``GATEWAY_JWT_LEEWAY``: it is disconnected.

A refresh moves the connection's ``exp``: the steps of the old one are
dropped as they fall due. Nothing here waits: the steps are callbacks that
must not block (the disconnect runs in a greenlet of its own).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

#: The steps of a token's end, in the order they fall due.
EXPIRING, EXPIRED, ENDED = 0, 1, 2
#: The longest one wait of the timetable, so that a stop is seen soon.
POLL_SECONDS = 1.0
#: Timetable entries below which those of ended connections are left to fall due.
COMPACT_ABOVE = 1000


class Lifetimes:
    """The token deadlines of one worker's connections, and what happens at each."""

    def __init__(
        self,
        lead: float,
        leeway: float,
        on_step: Callable[[str, int, float], None],
    ) -> None:
        self.lead = lead
        self.leeway = leeway
        self.on_step = on_step
        #: sid -> the exp now in force
        self._exp: dict[str, float] = {}
        #: (time due, step, sid, exp)
        self._due: list[tuple[float, int, str, float]] = []
        self._changed = threading.Event()

    def track(self, sid: str, exp: float) -> None:
        """``sid``'s token runs out at ``exp`` (Unix seconds): from now on its steps are those of this ``exp``.

        One entry per connection waits in the timetable: its next step. The
        same ``exp`` again (a refresh with a token that runs out at the same
        time) changes nothing: its warning is not sent twice.
        """
        if self._exp.get(sid) == exp:
            return
        self._exp[sid] = exp
        heapq.heappush(self._due, (exp - self.lead, EXPIRING, sid, exp))
        self._changed.set()

    def forget(self, sid: str) -> None:
        """``sid`` ended: none of its steps runs.

        Its entry is dropped as it falls due, or sooner: once the timetable
        holds twice as many entries as connections (and more than
        :data:`COMPACT_ABOVE`), those of ended or refreshed tokens go at once,
        so that churn never grows it.
        """
        self._exp.pop(sid, None)
        if len(self._due) > max(COMPACT_ABOVE, 2 * len(self._exp)):
            self._due = [entry for entry in self._due if self._exp.get(entry[2]) == entry[3]]
            heapq.heapify(self._due)

    def exp(self, sid: str) -> float | None:
        return self._exp.get(sid)

    def run_due(self, now: float) -> int:
        """Run every step due by ``now`` (Unix seconds) of a token still in force; return how many ran."""
        ran = 0
        while self._due and self._due[0][0] <= now:
            _, step, sid, exp = heapq.heappop(self._due)
            if self._exp.get(sid) != exp:
                continue  # refreshed, or ended
            if step == ENDED:
                del self._exp[sid]
            else:
                heapq.heappush(self._due, (exp if step == EXPIRING else exp + self.leeway, step + 1, sid, exp))
            self.on_step(sid, step, exp)
            ran += 1
        return ran

    def run(self, stopping: threading.Event) -> None:
        """Run the steps as they fall due until ``stopping`` is set."""
        while not stopping.is_set():
            self._changed.clear()
            self.run_due(time.time())
            wait = self._due[0][0] - time.time() if self._due else POLL_SECONDS
            self._changed.wait(min(POLL_SECONDS, max(0.0, wait)))

    @property
    def tracked(self) -> int:
        return len(self._exp)
