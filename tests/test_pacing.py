"""The scheduler's pacing loop, on a clock the test drives: no process, no real wait."""

from __future__ import annotations

from sqlmon.pacing import pace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def wait(self, seconds: float) -> None:
        self.waits.append(round(seconds, 6))
        self.now += seconds


def test_steps_keep_to_the_schedule_and_a_late_one_is_not_caught_up() -> None:
    clock = Clock()
    costs = iter([0.2, 0.1, 3.5, 0.1, 0.1])  # the third step overruns three intervals
    starts: list[float] = []

    def step() -> None:
        starts.append(round(clock.now, 6))
        clock.now += next(costs)

    ran = pace(
        step, 1.0, clock=lambda: clock.now, wait=clock.wait, stopped=lambda: len(starts) >= 5
    )
    assert ran == 5
    # On time, on time, late by 2.5 s: the next step at once, then every second from it.
    assert starts == [100.0, 101.0, 102.0, 105.5, 106.5]
    assert clock.waits == [0.8, 0.9, 0.0, 0.9]


def test_a_stop_ends_the_loop_before_the_next_wait() -> None:
    clock = Clock()
    ran = pace(
        lambda: None,
        1.0,
        clock=lambda: clock.now,
        wait=clock.wait,
        stopped=lambda: clock.now >= 102,
    )
    assert ran == 2 and clock.waits == [1.0, 1.0]
