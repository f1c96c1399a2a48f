"""The token timetable without a clock: each step at its time, refreshes move them, ended connections go."""

from __future__ import annotations

from gateway.lifetime import COMPACT_ABOVE, ENDED, EXPIRED, EXPIRING, Lifetimes


def timetable(lead: float = 60.0, leeway: float = 5.0) -> tuple[Lifetimes, list[tuple[str, int, float]]]:
    steps: list[tuple[str, int, float]] = []
    return Lifetimes(lead, leeway, lambda sid, step, exp: steps.append((sid, step, exp))), steps


def test_each_step_falls_due_at_its_time_and_in_order() -> None:
    lifetimes, steps = timetable()
    lifetimes.track("a", 1000.0)
    assert lifetimes.run_due(939.9) == 0
    assert lifetimes.run_due(940.0) == 1 and steps == [("a", EXPIRING, 1000.0)]
    assert lifetimes.run_due(999.9) == 0
    lifetimes.run_due(1000.0)
    lifetimes.run_due(1005.0)
    assert steps == [("a", EXPIRING, 1000.0), ("a", EXPIRED, 1000.0), ("a", ENDED, 1000.0)]
    assert lifetimes.tracked == 0 and lifetimes.run_due(10_000.0) == 0


def test_a_late_timetable_runs_every_step_due_at_once_in_order() -> None:
    lifetimes, steps = timetable()
    lifetimes.track("a", 1000.0)
    lifetimes.run_due(2000.0)
    assert [step for _, step, _ in steps] == [EXPIRING, EXPIRED, ENDED]


def test_a_refresh_moves_every_step_and_the_old_ones_never_run() -> None:
    lifetimes, steps = timetable()
    lifetimes.track("a", 1000.0)
    lifetimes.run_due(950.0)  # warned
    lifetimes.track("a", 5000.0)  # refreshed
    lifetimes.run_due(4000.0)
    assert steps == [("a", EXPIRING, 1000.0)], "nothing of the old token after the refresh"
    lifetimes.run_due(4940.0)
    assert steps[-1] == ("a", EXPIRING, 5000.0) and lifetimes.exp("a") == 5000.0


def test_the_same_exp_again_is_no_new_warning() -> None:
    lifetimes, steps = timetable()
    lifetimes.track("a", 1000.0)
    lifetimes.run_due(950.0)
    lifetimes.track("a", 1000.0)  # a refresh with a token that runs out at the same time
    lifetimes.run_due(960.0)
    assert steps == [("a", EXPIRING, 1000.0)]


def test_an_ended_connection_has_no_step_and_churn_does_not_grow_the_timetable() -> None:
    lifetimes, steps = timetable()
    lifetimes.track("keep", 9000.0)
    for n in range(10 * COMPACT_ABOVE):
        lifetimes.track(f"s{n}", 5000.0)
        lifetimes.forget(f"s{n}")
    assert len(lifetimes._due) <= COMPACT_ABOVE + 2, "entries of ended connections were dropped"
    lifetimes.run_due(9005.0)
    assert [sid for sid, _, _ in steps] == ["keep", "keep", "keep"]
