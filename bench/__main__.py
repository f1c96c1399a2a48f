"""``python -m bench``: run the benchmark, print the table, write ``bench/results/latest.json``.

Progress goes to the log (stderr); the results table to stdout.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bench import report
from bench.child import BenchError
from bench.runner import RESULTS, Plan, run
from bench.systems import SystemSpec

log = logging.getLogger("bench")
DEFAULT = Plan()
FC = TypeVar("FC", bound=Callable[..., object])


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a comma list of whole rates, like 2000,4000") from None
    if not rates or min(rates) <= 0:
        raise click.BadParameter("needs at least one rate above 0")
    return rates


def _systems(text: str) -> tuple[SystemSpec, ...]:
    try:
        return tuple(SystemSpec.parse(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _interrupted(signum: int, _frame: object) -> None:
    """SIGTERM stops the run like Ctrl-C: every process started is stopped first."""
    raise KeyboardInterrupt(f"signal {signum}")


def _knob(name: str, kind: click.ParamType[Any], text: str) -> Callable[[FC], FC]:
    """An option that overrides one field of :class:`Plan`, its default shown."""
    default = getattr(DEFAULT, name.removeprefix("--").replace("-", "_"))
    return click.option(name, type=kind, default=None, help=f"{text.rstrip('.')} [default: {default:g}].")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--quick", is_flag=True, help="Small numbers (1,000 clients, 200 users, short windows): a minute or two.")
@click.option("--systems", default=None,
              help="Comma list of NAME:WORKERS, NAME one of gateway, baseline, node "
                   "[default: gateway:1,gateway:2,baseline:1,baseline:2,node:1,node:2].")
@_knob("--clients", click.IntRange(1, 100_000), "Connections scenario: clients (over 25,000: several load generators).")
@_knob("--users", click.IntRange(1, 100_000), "Latency and rate scenarios: users.")
@_knob("--latency-rate", click.IntRange(1), "Latency scenario: updates/s.")
@_knob("--latency-seconds", click.FloatRange(0.5), "Latency scenario: seconds.")
@click.option("--rates", default=None, help="Rate steps, updates/s [default: 2000,3000,4500,...,34000].")
@_knob("--step-seconds", click.FloatRange(0.5), "Seconds per rate step.")
@click.option("--confirm/--no-confirm", default=None,
              help="Measure a failing rate step once more before calling it the limit [default: confirm].")
@click.option("--hostile/--no-hostile", default=None,
              help="Measure the latency window again while one client floods the server [default: hostile].")
@_knob("--publishers", click.IntRange(1, 32), "Most publisher processes.")
@_knob("--publisher-rate", click.IntRange(100), "Updates/s asked of one publisher process before another is added.")
@_knob("--publisher-threads", click.IntRange(1, 64), "Threads per publisher process, each with a publish in flight.")
@_knob("--publisher-nice", click.IntRange(0, 19), "Niceness of the publishers: 0 lets them compete for CPU.")
@_knob("--loadgen-processes", click.IntRange(1, 16), "Load-generator processes.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "latest.json",
              help="Where the JSON results go; each server's log goes to the same folder.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING"]), default="INFO")
def main(quick: bool, systems: str | None, rates: str | None, output: Path, log_level: str, **numbers: object) -> None:
    """Benchmark the gateway against a plain Flask-SocketIO baseline and a Node.js Socket.IO server, side by side."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    plan = Plan(log_level=log_level)
    plan = plan.quick() if quick else plan
    changes = {name: value for name, value in numbers.items() if value is not None}
    if systems is not None:
        changes["systems"] = _systems(systems)
    if rates is not None:
        changes["rates"] = _rates(rates)
    plan = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    try:
        results = run(plan, logs=output.parent)
    except (BenchError, AssertionError) as exc:
        log.error("benchmark failed: %s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.warning("interrupted; every process started was stopped")
        sys.exit(130)
    seconds = time.monotonic() - started
    report.write(output, report.document(plan, results, seconds, sys.argv))
    click.echo(report.steps(results))
    click.echo()
    click.echo(report.table(results))
    if hostile := report.hostile_table(results):
        click.echo()
        click.echo(hostile)
    click.echo(f"\n{len(results)} systems in {seconds:.0f} s; JSON in {output}")


if __name__ == "__main__":
    main(prog_name="python -m bench")
