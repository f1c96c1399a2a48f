"""The results as a table for the terminal and as JSON for ``bench/results/latest.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runner import DELIVERED_MIN, DROP_SECONDS, P99_MAX_MS, Neighbour, Plan, RateSearch, Step, SystemResult

COLUMNS = (
    "system", "workers", "connections", "KB/conn", "p50 ms", "p99 ms", "p99.9 ms", "lost@1k", "dup@1k", "us/update",
    "max rate/s", "lost", "duplicated", "recovered", "drop s",
)
#: The hostile neighbour's table: the honest clients' latency beside the quiet one, and what the flood got to send.
HOSTILE_COLUMNS = (
    "system", "workers", "p99 quiet ms", "p99 hostile ms", "ratio", "p50 ms", "p99.9 ms", "lost", "dup",
    "flood MiB", "flood msgs", "cut", "sessions",
)


def row(result: SystemResult) -> list[str]:
    """One system's line: connections, latency at the fixed rate, the rate search."""
    conn, lat, rate = result.connections, result.latency.tally, result.rate
    overload = rate.overload.tally if rate.overload else None
    return [
        result.system, str(result.workers), f"{conn.reached}/{conn.target}", _number(conn.kb_per_connection),
        _number(lat.p50_ms), _number(lat.p99_ms), _number(lat.p999_ms), str(lat.lost), str(lat.duplicated),
        _number(result.latency.worker_us_per_update),
        max_rate(rate), str(overload.lost) if overload else "-", str(overload.duplicated) if overload else "-",
        {True: "yes", False: "no", None: "-"}[rate.recovered],
        _number(conn.drop_seconds) if conn.drop_seconds is not None else f">{DROP_SECONDS:g}",
    ]


def max_rate(search: RateSearch) -> str:
    """The highest sustained rate; ``>=`` when the search ended without an overload."""
    if search.max_sustained is None:
        return f"<{search.steps[0].tally.rate:g}" if search.steps else "-"
    if search.overload is None:
        suffix = " (publisher-bound)" if search.publisher_bound else ""
        return f">={search.max_sustained}{suffix}"
    return str(search.max_sustained)


def p99_ratio(result: SystemResult) -> float | None:
    """The honest clients' p99 beside the hostile neighbour over their quiet p99."""
    if result.hostile is None:
        return None
    quiet, hostile = result.latency.tally.p99_ms, result.hostile.step.tally.p99_ms
    if not (math.isfinite(quiet) and math.isfinite(hostile)) or quiet <= 0:
        return None
    return round(hostile / quiet, 2)


def hostile_row(result: SystemResult, neighbour: Neighbour) -> list[str]:
    """One system's line of the hostile neighbour: latency quiet and flooded, what the flood sent."""
    lat, flood = neighbour.step.tally, neighbour.flood
    ratio = p99_ratio(result)
    return [
        result.system, str(result.workers), _number(result.latency.tally.p99_ms), _number(lat.p99_ms),
        f"{_number(ratio)}x" if ratio is not None else "-", _number(lat.p50_ms), _number(lat.p999_ms),
        str(lat.lost), str(lat.duplicated), _number(flood.bytes / 2**20), str(flood.messages), str(flood.cuts),
        str(flood.sessions),
    ]


def hostile_rows(results: list[SystemResult]) -> list[list[str]]:
    return [hostile_row(result, result.hostile) for result in results if result.hostile is not None]


def table(results: list[SystemResult]) -> str:
    return _grid(COLUMNS, [row(result) for result in results])


def hostile_table(results: list[SystemResult]) -> str:
    """The hostile neighbour's table under a title line; empty when the scenario did not run."""
    sizes = sorted({result.hostile.flood.size for result in results if result.hostile is not None})
    if not sizes:
        return ""
    title = f"hostile neighbour: the latency window again while one client sends {'/'.join(map(str, sizes))}-byte " \
            "messages as fast as it can"
    return f"{title}\n{_grid(HOSTILE_COLUMNS, hostile_rows(results))}"


def _grid(columns: tuple[str, ...], body: list[list[str]]) -> str:
    rows = [list(columns), *body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def steps(results: list[SystemResult]) -> str:
    """Every measured window, for reading what bounded each system."""
    lines = []
    for result in results:
        conn = result.connections
        lines.append(f"{result.system} x{result.workers}:")
        lines.append(
            f"  clients   {conn.reached} of {conn.target} connected in {conn.seconds:g} s, workers' RSS "
            f"{conn.rss_before_kb} -> {conn.rss_after_kb} KiB; every disconnect handled "
            f"{conn.drop_seconds if conn.drop_seconds is not None else 'not'} s after all clients closed; "
            f"stopped after SIGTERM in {', '.join(f'{k} {v:g} s' for k, v in result.stop_seconds.items())}"
        )
        lines.append(f"  latency   {_step(result.latency)}")
        if result.hostile is not None:
            lines.append(f"  hostile   {_step(result.hostile.step)}")
            lines.append(f"  flood     {result.hostile.flood.describe()}")
        for step in result.rate.steps:
            lines.append(f"  step      {_step(step)}")
        if result.rate.recovery is not None:
            lines.append(f"  recovery  {_step(result.rate.recovery)}")
    return "\n".join(lines)


def _step(step: Step) -> str:
    verdict = "ok  " if step.sustained else "FAIL"
    return f"{verdict} {step.describe()}"


def document(plan: Plan, results: list[SystemResult], seconds: float, command: list[str]) -> dict[str, Any]:
    """Everything measured, with the plan and the machine, as plain JSON values."""
    doc: dict[str, Any] = _plain({
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "seconds": round(seconds, 1),
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "load_average_at_end": os.getloadavg(),
        },
        "criteria": {"delivered_min": DELIVERED_MIN, "p99_max_ms": P99_MAX_MS},
        "plan": dataclasses.asdict(plan),
        "table": {"columns": list(COLUMNS), "rows": [row(result) for result in results]},
        "hostile_table": {"columns": list(HOSTILE_COLUMNS), "rows": hostile_rows(results)},
        "results": [_result(result) for result in results],
    })
    return doc


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _result(result: SystemResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    _derived(data["latency"], result.latency)
    for name, step in (("overload", result.rate.overload), ("recovery", result.rate.recovery)):
        if step is not None:
            _derived(data["rate"][name], step)
    for plain, step in zip(data["rate"]["steps"], result.rate.steps, strict=True):
        _derived(plain, step)
    data["rate"]["recovered"] = result.rate.recovered
    if result.hostile is not None:
        _derived(data["hostile"]["step"], result.hostile.step)
        data["hostile"]["p99_quiet_ms"] = result.latency.tally.p99_ms
        data["hostile"]["p99_ratio"] = p99_ratio(result)
        data["hostile"]["flood"]["mib_per_s"] = result.hostile.flood.mib_per_s
    return data


def _derived(plain: dict[str, Any], step: Step) -> None:
    plain["sustained"] = step.sustained
    plain["worker_us_per_update"] = step.worker_us_per_update
    plain["tally"]["delivered_share"] = round(step.tally.delivered_share, 5)


def _plain(value: Any) -> Any:
    """NaN (no sample) becomes null; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
