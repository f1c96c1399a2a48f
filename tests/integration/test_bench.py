"""``make bench`` still runs: both systems, end to end, at toy size.

Only what the benchmark must get right is asserted (every client connected,
every update delivered once, clean server logs, the tables printed, the
hostile neighbour run and reported); its figures are for ``make bench`` to
report, never for a test to judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.support import REPO

TOY = [
    "--systems", "gateway:1,baseline:1", "--clients", "50", "--users", "20", "--latency-rate", "200",
    "--latency-seconds", "0.5", "--rates", "500", "--step-seconds", "0.5", "--publishers", "1",
]


def test_bench_runs_both_systems_and_delivers_every_update_once(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", *TOY, "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=100,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gateway" in run.stdout and "baseline" in run.stdout
    assert "p99 hostile ms" in run.stdout
    results = json.loads(output.read_text())["results"]
    assert [(r["system"], r["workers"]) for r in results] == [("gateway", 1), ("baseline", 1)]
    for result in results:
        assert result["connections"]["reached"] == 50
        for window in [result["latency"], *result["rate"]["steps"]]:
            tally = window["tally"]
            assert tally["published"] > 0
            assert (tally["lost"], tally["duplicated"]) == (0, 0)
            assert tally["delivered"] == tally["published"]
        hostile = result["hostile"]
        assert hostile["step"]["tally"]["published"] > 0
        flood = hostile["flood"]
        assert flood["sessions"] >= 1 and flood["messages"] > 0
        assert flood["bytes"] == flood["messages"] * flood["size"]
        assert {"cuts", "failed", "reasons", "seconds"} <= flood.keys()
        assert {"p99_quiet_ms", "p99_ratio", "connected_after"} <= hostile.keys()
        assert result["log_problems"] == []
