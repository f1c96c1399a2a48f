"""The fan-out's batched counts reach the exported metrics, and only once."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gateway.metrics import FanoutTally


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_flush_writes_every_count_once_and_starts_again_from_zero() -> None:
    before = {
        "received": sample("gateway_updates_received_total", topic="pnl"),
        "delivered": sample("gateway_updates_delivered_total", topic="pnl"),
        "skipped": sample("gateway_updates_skipped_total", topic="pnl"),
        "observed": sample("gateway_publish_to_send_seconds_count"),
    }
    tally = FanoutTally()
    assert not tally
    tally.received["pnl"] += 3
    tally.delivered["pnl"] += 5
    tally.skipped["pnl"] += 1
    tally.latencies.extend([0.001, 0.002])
    assert tally
    tally.flush()
    tally.flush()
    assert not tally
    assert sample("gateway_updates_received_total", topic="pnl") == before["received"] + 3
    assert sample("gateway_updates_delivered_total", topic="pnl") == before["delivered"] + 5
    assert sample("gateway_updates_skipped_total", topic="pnl") == before["skipped"] + 1
    assert sample("gateway_publish_to_send_seconds_count") == before["observed"] + 2
