"""What one measurement window delivered: pure functions over what was sent and received.

An update is (user, seq). Sent: for each user, the seqs ``first..last`` the
publishers reported for the window. Received: every event the clients
recorded. Then:

- delivered: distinct sent updates received at least once;
- lost: sent updates never received before the window's drain ended;
- duplicated: receptions of a sent update beyond its first;
- stale: receptions of updates of an earlier window (late arrivals);
- snapshots: updates the server flagged ``"snapshot": true`` (a resend of
  the latest on subscribe), counted apart and never as duplicates;
- latency: receive time minus the publisher's ``ts``, over first receptions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import Received
from bench.publish import Sent


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence; NaN when it is empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Tally:
    """One window's outcome, in numbers fit for the report."""

    rate: float
    publish_rate: float
    published: int
    delivered: int
    lost: int
    duplicated: int
    stale: int
    snapshots: int
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def delivered_share(self) -> float:
        return self.delivered / self.published if self.published else 0.0


def tally(sent: Sent, received: Received) -> Tally:
    """Compare what the publishers sent with what the clients received."""
    records = received.records
    first_seen: dict[tuple[int, int], float] = {}
    duplicated = stale = snapshots = 0
    last_arrival = sent.start
    spans = {i: sent.ranges[user] for i, user in enumerate(received.users) if user in sent.ranges}
    for user, seq, ts, at, snapshot in zip(
        records.user, records.seq, records.ts, records.received, records.snapshot, strict=True
    ):
        span = spans.get(user)
        if snapshot:
            snapshots += 1
        elif span is None or not span[0] <= seq <= span[1]:
            stale += 1
        elif (user, seq) in first_seen:
            duplicated += 1
        else:
            first_seen[(user, seq)] = at - ts
            last_arrival = max(last_arrival, at)
    published = sum(last - first + 1 for first, last in sent.ranges.values())
    latencies = sorted(first_seen.values())
    elapsed = max(last_arrival - sent.start, sent.seconds)
    return Tally(
        rate=sent.rate, publish_rate=round(sent.achieved, 1), published=published, delivered=len(first_seen),
        lost=published - len(first_seen), duplicated=duplicated, stale=stale, snapshots=snapshots,
        delivered_per_s=round(len(first_seen) / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=_ms(percentile(latencies, 0.50)), p99_ms=_ms(percentile(latencies, 0.99)),
        p999_ms=_ms(percentile(latencies, 0.999)), max_ms=_ms(latencies[-1] if latencies else math.nan),
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
